-- Roles: what each role that touches pgwebhooks may do (least privilege).
-- Re-applied by every `migrate`, so grants cover objects added since.
--
-- * webhooks_capture (NOLOGIN, sql/10_capture.sql): owns webhooks.capture(),
--   webhooks.plain_capture(), capture_shape() and capture_install();
--   may insert events, read the idle flag and keep capture_health, nothing
--   else; runs no table owner's code (V15), and is the only role that may
--   name the capture functions in a trigger.
-- * webhooks_app (NOLOGIN): for the app's roles that watch their own tables
--   or call emit(); grants USAGE on the schema and EXECUTE on watch, unwatch,
--   rewatch, emit, wake and resend. Writing to a watched table needs no
--   grant at all.
-- * webhooks_sidecar (NOLOGIN): for the role `pgwebhooks run` logs in as;
--   reads and writes pgwebhooks' own tables and calls its functions, and has
--   no right outside schema webhooks (the example app's handlers are
--   SECURITY DEFINER; a handler of yours that is not needs its own grants).
-- The migrate role owns schema webhooks (and everything in it) and is a
-- member of webhooks_capture; it needs CREATEROLE only the first time, to
-- create these roles, and superuser only for the event trigger.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'webhooks_sidecar') THEN
        CREATE ROLE webhooks_sidecar NOLOGIN;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE EXCEPTION 'pgwebhooks: role % cannot create the role webhooks_sidecar', current_user
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Run once as a superuser: CREATE ROLE webhooks_sidecar NOLOGIN;';
END
$$;
GRANT USAGE ON SCHEMA webhooks TO webhooks_sidecar;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA webhooks TO webhooks_sidecar;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA webhooks TO webhooks_sidecar;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA webhooks TO webhooks_sidecar;
-- Nothing of the sidecar's may run the capture trigger's code directly, or
-- the event trigger's.
REVOKE EXECUTE ON FUNCTION webhooks.capture(), webhooks.plain_capture(), webhooks.capture_shape(), webhooks.on_ddl(),
                            webhooks.capture_install(regclass, text, jsonb),
                            webhooks.capture_fault(oid, bigint, text, timestamptz),
                            webhooks.capture_recovered(oid, timestamptz) FROM webhooks_sidecar;
