-- Fan-out: from the outbox to jobs. Which endpoints want an event
-- (subscriptions, filters), claiming a range of events under a lease
-- (batch_claim, batch_rescue, batch_complete), and the idle flag writers
-- read before they NOTIFY (listener_*, fanout_probe).
--
-- Names are noun_verb; SQL is the API: the sidecar's delivery path runs
-- these functions (its reads for status and the console are plain
-- queries, in src/db/). Every function that changes a lease checks that the caller
-- still holds it, and takes `now` as a parameter so tests can move time.
--
-- The sidecar's bookkeeping commits asynchronously (set_config(
-- 'synchronous_commit', 'off', true) inside batch_claim, batch_rescue,
-- batch_complete and the delivery functions, so only for that
-- transaction). A commit is visible to every session at once either way;
-- what changes is that it does not wait for its WAL flush, so it no longer
-- competes with the app's commits for the disk. A Postgres crash can lose
-- the last moments of bookkeeping (at most 3 x wal_writer_delay), always as
-- a consistent prefix; the effect is a delivery made again with the same
-- webhook-id, never a lost event: events are committed by the app's own
-- transaction, and inbound callbacks (inbound_apply) commit synchronously
-- before they are answered.

-- Subscriptions changed: bump the version (transactionally) and tell the
-- replicas to reload.
CREATE OR REPLACE FUNCTION webhooks.config_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE webhooks.config_version SET version = version + 1;
    PERFORM pg_notify('webhooks', 'config');
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS config_changed ON webhooks.endpoints;
CREATE TRIGGER config_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON webhooks.endpoints
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks.config_changed();
DROP TRIGGER IF EXISTS config_changed ON webhooks.endpoint_secrets;
CREATE TRIGGER config_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON webhooks.endpoint_secrets
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks.config_changed();

-- Does pattern (with * wildcards) match text?
CREATE OR REPLACE FUNCTION webhooks.matches(pattern text, subject text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT subject LIKE replace(replace(replace(replace(pattern, '\', '\\'), '%', '\%'), '_', '\_'), '*', '%')
$$;

-- Does endpoint ep want an event of this type, tenant and origin? (The
-- sidecar decides the same in Rust: endpoints.rs, Endpoint::wants.)
CREATE OR REPLACE FUNCTION webhooks.endpoint_wants(ep webhooks.endpoints, event_type text, tenant_id text, origin text)
RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM unnest(ep.event_types) p, regexp_split_to_table(p, '\s*,\s*') q
                    WHERE q <> '' AND webhooks.matches(q, event_type)
                      -- pgwebhooks' own events only to patterns naming them (a bare * does not)
                      AND (event_type NOT LIKE 'webhooks.%' OR q LIKE 'webhooks.%'))
       AND NOT EXISTS (SELECT 1 FROM unnest(ep.exclude_types) p, regexp_split_to_table(p, '\s*,\s*') q
                        WHERE q <> '' AND webhooks.matches(q, event_type))
       AND (ep.tenant_id IS NULL OR ep.tenant_id = endpoint_wants.tenant_id)
       AND (origin IS NULL OR (origin <> 'webhooks/endpoint/' || ep.id AND origin <> 'webhooks/test'))
       AND (origin IS NULL OR NOT EXISTS (SELECT 1 FROM unnest(ep.ignore_origins) p
                                           WHERE webhooks.matches(p, origin)))
$$;

-- The envelope an endpoint's content filter reads: the standard body's
-- fields (timestamp as the body writes it, RFC 3339 UTC with milliseconds).
-- (No SET clause, every name qualified: so that Postgres inlines it, and
-- filter_accepts below, into the fan-out's statement instead of calling
-- them per event; with a SET clause each call saved and restored the
-- search path.)
CREATE OR REPLACE FUNCTION webhooks.event_envelope(e webhooks.events) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT pg_catalog.jsonb_build_object('id', e.event_id, 'type', e.event_type,
               'timestamp', pg_catalog.to_char(pg_catalog.timezone('UTC', e.occurred_at), 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
               'tenant_id', e.tenant_id, 'data', e.payload, 'previous', e.previous)
$$;

-- Does an endpoint's content filter (a jsonb_path_match predicate; NULL:
-- none) accept the event? A predicate that fails at run time (a type
-- mismatch, a non-boolean result) does not match: silent => true, so a bad
-- filter never stalls fan-out. Used by the sidecar's fan-out (only for
-- endpoints that have a filter) and by replay.
CREATE OR REPLACE FUNCTION webhooks.filter_accepts(filter jsonpath, e webhooks.events) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT filter IS NULL OR coalesce(pg_catalog.jsonb_path_match(webhooks.event_envelope(e), filter, '{}'::pg_catalog.jsonb, true), false)
$$;

-- Claim the next range of committed events for fan-out and first delivery.
-- Eligible: past the cursor and written by a transaction older than every
-- running one (txid < snapshot xmin), so no later commit can land behind the
-- cursor. The cursor row lock serialises replicas for the few milliseconds
-- this takes; the range is leased as a row of webhooks.fanout_batches.
CREATE OR REPLACE FUNCTION webhooks.batch_claim(
    replica    text,
    max_events integer,
    lease      interval,
    now        timestamptz DEFAULT clock_timestamp()
) RETURNS TABLE (
    batch_id       bigint,
    event_id       uuid,
    event_type     text,
    tenant_id      text,
    origin         text,
    occurred_at    timestamptz,
    payload        text,
    previous       text,
    config_version bigint
)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cur_txid  xid8;
    cur_seq   bigint;
    horizon   xid8;
    last_txid xid8;
    last_seq  bigint;
    bid       bigint;
    ver       bigint;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);  -- bookkeeping: see the note at the top
    SELECT c.txid, c.seq INTO cur_txid, cur_seq FROM webhooks.fanout_cursor c FOR UPDATE;
    horizon := pg_snapshot_xmin(pg_current_snapshot());
    SELECT p.txid, p.seq INTO last_txid, last_seq
      FROM (SELECT e.txid, e.seq FROM webhooks.events e
             WHERE (e.txid, e.seq) > (cur_txid, cur_seq) AND e.txid < horizon
             ORDER BY e.txid, e.seq LIMIT max_events) p
     ORDER BY p.txid DESC, p.seq DESC LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE webhooks.fanout_cursor SET txid = last_txid, seq = last_seq;
    INSERT INTO webhooks.fanout_batches (from_txid, from_seq, to_txid, to_seq, claimed_by, lease_until, created_at)
    VALUES (cur_txid, cur_seq, last_txid, last_seq, replica, now + lease, now)
    RETURNING id INTO bid;
    SELECT v.version INTO ver FROM webhooks.config_version v;
    RETURN QUERY
        SELECT bid, e.event_id, e.event_type, e.tenant_id, e.origin, e.occurred_at,
               e.payload::text, e.previous::text, ver
          FROM webhooks.events e
         WHERE (e.txid, e.seq) > (cur_txid, cur_seq) AND (e.txid, e.seq) <= (last_txid, last_seq)
         ORDER BY e.txid, e.seq;
END
$$;

-- Take over one batch whose lease expired (its replica died or stalled).
-- done_endpoints lists endpoints that already have a delivery row for the
-- event, so only what was not recorded is sent again.
CREATE OR REPLACE FUNCTION webhooks.batch_rescue(
    replica text,
    lease   interval,
    now     timestamptz DEFAULT clock_timestamp()
) RETURNS TABLE (
    batch_id       bigint,
    event_id       uuid,
    event_type     text,
    tenant_id      text,
    origin         text,
    occurred_at    timestamptz,
    payload        text,
    previous       text,
    config_version bigint,
    done_endpoints bigint[]
)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    b   webhooks.fanout_batches;
    ver bigint;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);  -- bookkeeping: see the note at the top
    UPDATE webhooks.fanout_batches fb SET claimed_by = replica, lease_until = now + lease
     WHERE fb.id = (SELECT x.id FROM webhooks.fanout_batches x WHERE x.lease_until < now
                     ORDER BY x.id LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING fb.* INTO b;
    IF b.id IS NULL THEN
        RETURN;
    END IF;
    SELECT v.version INTO ver FROM webhooks.config_version v;
    RETURN QUERY
        SELECT b.id, e.event_id, e.event_type, e.tenant_id, e.origin, e.occurred_at,
               e.payload::text, e.previous::text, ver,
               ARRAY(SELECT d.endpoint_id FROM webhooks.deliveries d WHERE d.event_id = e.event_id)
          FROM webhooks.events e
         WHERE (e.txid, e.seq) > (b.from_txid, b.from_seq) AND (e.txid, e.seq) <= (b.to_txid, b.to_seq)
         ORDER BY e.txid, e.seq;
END
$$;

-- A batch is done when every delivery in it is recorded. Only the lease
-- holder may delete it; returns how many were deleted.
CREATE OR REPLACE FUNCTION webhooks.batch_complete(replica text, ids bigint[]) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    n integer;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);  -- bookkeeping: see the note at the top
    WITH d AS (DELETE FROM webhooks.fanout_batches b
                WHERE b.id = ANY (ids) AND b.claimed_by = replica RETURNING 1)
    SELECT count(*)::integer INTO n FROM d;
    RETURN n;
END
$$;

-- webhooks.listeners_idle (V14) counts the idle listeners, for writers to
-- read without a query. Every change to webhooks.listeners recounts it,
-- one transaction at a time (the lock), so concurrent replicas cannot leave
-- a stale count. SECURITY DEFINER: setval needs rights on the sequence that
-- only this function uses.
CREATE OR REPLACE FUNCTION webhooks.listeners_idle_sync() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('webhooks.listeners_idle'));
    PERFORM setval('webhooks.listeners_idle', (SELECT count(*) FROM webhooks.listeners l WHERE l.idle), true);
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION webhooks.listeners_idle_sync() FROM PUBLIC;

DROP TRIGGER IF EXISTS listeners_idle_sync ON webhooks.listeners;
CREATE TRIGGER listeners_idle_sync AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON webhooks.listeners
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks.listeners_idle_sync();

-- A listener says whether it is idle (waiting on LISTEN). Writers NOTIFY
-- only while some listener is idle (webhooks.listeners_idle > 0).
CREATE OR REPLACE FUNCTION webhooks.listener_set(replica text, idle boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    INSERT INTO webhooks.listeners AS l (replica, idle, updated_at) VALUES (replica, idle, now())
    ON CONFLICT ON CONSTRAINT listeners_pkey DO UPDATE SET idle = excluded.idle, updated_at = excluded.updated_at;
END
$$;

CREATE OR REPLACE FUNCTION webhooks.listener_forget(replica text) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM webhooks.listeners l WHERE l.replica = listener_forget.replica
$$;

-- Listener rows of replicas whose LISTEN connection is gone (killed
-- without a goodbye): an idle flag nobody honours would make every writer
-- NOTIFY for nothing.
CREATE OR REPLACE FUNCTION webhooks.listener_rescue() RETURNS integer
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    WITH d AS (
        DELETE FROM webhooks.listeners l
         WHERE l.updated_at < now() - interval '10 seconds'
           AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                            WHERE a.application_name = 'pgwebhooks listen ' || l.replica)
        RETURNING 1)
    SELECT count(*)::integer FROM d
$$;

-- After a listener marks itself idle: is there work it would miss, and has
-- every transaction that could have seen it busy ended? (horizon >= the
-- xmax taken right after the idle flag committed.)
-- Planned afresh at every call (force_custom_plan): the sidecar calls it at
-- every idle wait, and after five calls plpgsql may keep a generic plan,
-- which for "past the cursor" is a sequential scan of the whole outbox
-- (its cost then grows with the history; the cursor values make the custom
-- plan an index scan that finds nothing at once).
CREATE OR REPLACE FUNCTION webhooks.fanout_probe(
    OUT has_work boolean, OUT horizon bigint, OUT xmax bigint
)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    cur_txid xid8;
    cur_seq  bigint;
    snap     pg_snapshot := pg_current_snapshot();
BEGIN
    -- Constants, not a join: the comparison is then an index condition.
    SELECT c.txid, c.seq INTO cur_txid, cur_seq FROM webhooks.fanout_cursor c;
    has_work := EXISTS (SELECT 1 FROM webhooks.events e
                         WHERE (e.txid, e.seq) > (cur_txid, cur_seq) AND e.txid < pg_snapshot_xmin(snap));
    horizon := pg_snapshot_xmin(snap)::text::bigint;
    xmax := pg_snapshot_xmax(snap)::text::bigint;
END
$$;
