-- V15: capture fails open, and says so.
--
-- Why: a payload function that raised (a bug, a missing right, a column an
-- app migration dropped) failed the app's own write. Now the write commits
-- and the change is still captured, as the row's own JSON, with the error
-- kept beside it (events.shape_error) so a receiver's operator can see why
-- the data has another shape and `resend` it once the function is fixed.
-- A nullable column without a default: adding it rewrites nothing, and a
-- sidecar of the previous release, which names the columns it reads and
-- writes, goes on delivering while this runs.
ALTER TABLE webhooks.events ADD COLUMN IF NOT EXISTS shape_error text;

-- One row per watched table whose capture has failed to shape an event, or
-- whose options an ALTER TABLE broke: the last error, how many failures,
-- and when capture last succeeded again. A table is degraded while its last
-- failure is newer than its last success (webhooks.watched, status, the
-- console and the API read it). Written only by capture (webhooks_capture)
-- and by the DDL hook, and only by a writer that gets its advisory lock
-- without waiting, so writers of one table never queue on this row.
CREATE TABLE webhooks.capture_health (
    target         oid PRIMARY KEY,
    failures       bigint NOT NULL DEFAULT 0,
    last_error     text,
    last_failed_at timestamptz,
    last_ok_at     timestamptz,
    reported_at    timestamptz,
    unreported     bigint NOT NULL DEFAULT 0
);

-- Who may emit() events for which tenant: once a tenant has rows here,
-- only a session whose login role is a member of one of them may emit for
-- it (emit(), emit_many(), resend). A tenant with no rows is open to every
-- member of webhooks_app, as before. Written by the operator (migrate role
-- or sidecar), never by an app.
CREATE TABLE webhooks.tenant_emitters (
    tenant_id text NOT NULL,
    emitter   name NOT NULL,
    CONSTRAINT tenant_emitters_pkey PRIMARY KEY (tenant_id, emitter)
);
