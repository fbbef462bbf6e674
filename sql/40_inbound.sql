-- Inbound: record a callback once and apply it with its route's handler,
-- in one transaction. Called by the sidecar's HTTP endpoint.

-- Record and apply one callback. Returns the HTTP status to answer with
-- (200 applied, 200 duplicate with the first result, 404 no such route,
-- 409 same key as an applied callback but another body, 422 rejected by
-- the handler, 500 the handler failed otherwise) and the JSON to answer.
-- A handler rejects with SQLSTATE 'WH422'; a data error, a violated
-- constraint or a value too big for the app's schema (e.g. a string over an
-- index's size limit) in its writes is the payload's fault too: 422, never
-- a 500, and none of the handler's writes stay. Any other error is a 500
-- that names the record (inboundId), whose `error` keeps the message for
-- the DBA; the caller never sees it.
-- A duplicate of an applied callback is not applied again; a duplicate of
-- a rejected one is tried again (the data may have been fixed meanwhile).
-- A duplicate key with a different payload (compared as jsonb, so key order
-- and spacing do not matter) is a conflict: the route's idempotency fields
-- do not tell the two apart, and answering "duplicate" would drop one.
-- Concurrent duplicates wait on the unique key: one applies, the others
-- then see it applied.
-- The handler runs with its own `SET search_path` if it has one, else with
-- `<its schema>, public, pg_temp`, so handlers written with unqualified
-- names work; inbound_apply's own search path is restored afterwards.
CREATE OR REPLACE FUNCTION webhooks.inbound_apply(
    route           text,
    idempotency_key text,
    payload         jsonb,
    OUT http_status integer,
    OUT body        jsonb
)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    r       webhooks.inbound_routes;
    rec_id  bigint;
    prior   webhooks.inbound;
    outcome jsonb;
    msg     text;
    state   text;
    digest  bytea := sha256(convert_to(payload::text, 'UTF8'));
    call    text;
    path    text;
BEGIN
    SELECT * INTO r FROM webhooks.inbound_routes ir WHERE ir.route = inbound_apply.route AND ir.enabled;
    IF NOT FOUND THEN
        http_status := 404;
        body := jsonb_build_object('success', false, 'error', 'unknown route');
        RETURN;
    END IF;

    INSERT INTO webhooks.inbound AS i (route, idempotency_key, status, payload, payload_sha256)
    VALUES (route, idempotency_key, 'rejected', payload, digest)
    ON CONFLICT ON CONSTRAINT inbound_route_key DO UPDATE
        SET attempts = i.attempts + 1, payload = excluded.payload, payload_sha256 = excluded.payload_sha256,
            received_at = now(), error = NULL
      WHERE i.status = 'rejected'
    RETURNING i.id INTO rec_id;

    IF rec_id IS NULL THEN
        SELECT * INTO prior FROM webhooks.inbound i
         WHERE i.route = inbound_apply.route AND i.idempotency_key = inbound_apply.idempotency_key;
        IF prior.payload_sha256 IS DISTINCT FROM digest AND prior.payload_sha256 IS NOT NULL THEN
            http_status := 409;
            body := jsonb_build_object(
                'success', false,
                'error', format('a different callback with the same idempotency key (%s) was already applied; '
                                'send a distinct webhook-id or Idempotency-Key, or include the field that changed',
                                idempotency_key),
                'inboundId', prior.id);
            RETURN;
        END IF;
        UPDATE webhooks.inbound i SET attempts = i.attempts + 1 WHERE i.id = prior.id;
        http_status := 200;
        body := jsonb_build_object('message', 'applied')
                || coalesce(prior.result, '{}'::jsonb)
                || jsonb_build_object('success', true, 'duplicate', true, 'inboundId', prior.id);
        RETURN;
    END IF;

    -- The origin of the handler's writes; webhooks.origin_verified() accepts
    -- it only with this transaction's own inbound record.
    PERFORM set_config('webhooks.inbound_id', rec_id::text, true);
    -- Formatted before the search path changes: regproc output is qualified
    -- (and quoted) as seen from pg_catalog, pg_temp.
    call := format('SELECT %s($1)', r.handler);
    SELECT CASE WHEN EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%') THEN NULL
                ELSE format('%I, public, pg_temp', n.nspname) END
      INTO path
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = r.handler;
    PERFORM set_config('webhooks.origin', 'inbound/' || route, true);
    BEGIN
        IF path IS NOT NULL THEN
            PERFORM set_config('search_path', path, true);
        END IF;
        EXECUTE call INTO outcome USING payload;
        PERFORM set_config('search_path', 'pg_catalog, pg_temp', true);
    EXCEPTION
        WHEN SQLSTATE 'WH422' OR data_exception OR integrity_constraint_violation OR program_limit_exceeded THEN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, state = RETURNED_SQLSTATE;
            UPDATE webhooks.inbound i SET status = 'rejected', error = msg WHERE i.id = rec_id;
            PERFORM set_config('webhooks.origin', '', true);
            http_status := 422;
            body := jsonb_build_object('success', false, 'error', msg, 'code', state, 'inboundId', rec_id);
            RETURN;
        WHEN OTHERS THEN
            -- Not the payload's fault (a bug, a missing grant...): kept for
            -- the DBA, never shown to the caller. A cancel (statement
            -- timeout) is not caught here: nothing is recorded then.
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, state = RETURNED_SQLSTATE;
            UPDATE webhooks.inbound i SET status = 'rejected', error = format('%s (SQLSTATE %s)', msg, state)
             WHERE i.id = rec_id;
            PERFORM set_config('webhooks.origin', '', true);
            http_status := 500;
            body := jsonb_build_object('success', false, 'error', 'internal error', 'inboundId', rec_id);
            RETURN;
    END;
    PERFORM set_config('webhooks.origin', '', true);
    outcome := CASE WHEN jsonb_typeof(outcome) = 'object' THEN outcome
                    WHEN outcome IS NULL THEN '{}'::jsonb
                    ELSE jsonb_build_object('result', outcome) END;
    UPDATE webhooks.inbound i SET status = 'applied', result = outcome, applied_at = now()
     WHERE i.id = rec_id;
    http_status := 200;
    body := jsonb_build_object('message', 'applied') || outcome || jsonb_build_object('success', true, 'inboundId', rec_id);
END
$$;

-- Add or replace a route (for routes added in SQL: POST /inbound/{route}),
-- and enable it. Refuses what would weaken the server:
-- * a secret that is not NULL (PGWEBHOOKS_INBOUND_SECRET applies) or at
--   least 16 printable characters without spaces; an empty one used to
--   let anyone in;
-- * a handler that is not `(jsonb) RETURNS jsonb`, or lives in schema
--   webhooks or pg_catalog. A handler runs as the sidecar's role and its
--   result goes back to the caller: writing webhooks.inbound_routes is
--   worth as much as the sidecar's rights. Make handlers the app's own
--   SECURITY DEFINER functions.
CREATE OR REPLACE FUNCTION webhooks.inbound_route_set(
    route              text,
    handler            regproc,
    idempotency_fields text[] DEFAULT '{}',
    secret             text DEFAULT NULL,
    description        text DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    p pg_proc;
BEGIN
    IF secret IS NOT NULL AND secret !~ '^[!-~]{16,}$' THEN
        RAISE EXCEPTION 'route %: the secret must be at least 16 printable characters without spaces (this one is %)',
                        route, CASE WHEN btrim(secret) = '' THEN 'empty'
                                    WHEN secret ~ '[^!-~]' THEN 'holds spaces or other unprintable characters'
                                    ELSE length(secret) || ' characters long' END
              USING ERRCODE = '22023',
                    HINT = 'pass NULL to use PGWEBHOOKS_INBOUND_SECRET; make one with: openssl rand -hex 32';
    END IF;
    IF secret LIKE 'whsec\_%' AND substr(secret, 7) !~ '^[A-Za-z0-9+/]+={0,2}$' THEN
        RAISE EXCEPTION 'route %: a whsec_ secret must be base64 after the prefix', route USING ERRCODE = '22023';
    END IF;
    -- A field is a top-level key or a dotted path into the body (task.id);
    -- one with an empty part could never match: every key would fall back
    -- to the body's hash.
    IF EXISTS (SELECT FROM unnest(idempotency_fields) f
                WHERE f IS NULL OR rtrim(f, '?') = '' OR rtrim(f, '?') ~ '(^\.|\.\.|\.$)') THEN
        RAISE EXCEPTION 'route %: idempotency field % is not a key or a dotted path into the body',
                        route, (SELECT quote_nullable(f) FROM unnest(idempotency_fields) f
                                 WHERE f IS NULL OR rtrim(f, '?') = '' OR rtrim(f, '?') ~ '(^\.|\.\.|\.$)' LIMIT 1)
              USING ERRCODE = '22023',
                    HINT = 'name a top-level key (event) or a path of keys and array indexes (task.id, items.0.sku); a trailing ? makes it optional';
    END IF;
    SELECT * INTO p FROM pg_proc WHERE oid = handler;
    IF p.pronamespace IN ('webhooks'::regnamespace, 'pg_catalog'::regnamespace) THEN
        RAISE EXCEPTION 'route %: handler % is in schema %; a handler must be one of the app''s own functions',
                        route, handler, p.pronamespace::regnamespace USING ERRCODE = '42501';
    END IF;
    IF p.prokind <> 'f' OR p.pronargs <> 1 OR p.proargtypes[0] <> 'jsonb'::regtype
       OR p.prorettype <> 'jsonb'::regtype OR p.proretset THEN
        RAISE EXCEPTION 'route %: handler % must be a function (payload jsonb) RETURNS jsonb, with exactly one argument',
                        route, handler::oid::regprocedure USING ERRCODE = '42P13';
    END IF;
    INSERT INTO webhooks.inbound_routes AS r (route, handler, idempotency_fields, secret, description)
    VALUES (route, handler, idempotency_fields, secret, description)
    ON CONFLICT ON CONSTRAINT inbound_routes_pkey DO UPDATE
       SET handler = excluded.handler, idempotency_fields = excluded.idempotency_fields,
           secret = excluded.secret, description = excluded.description, enabled = true;
END
$$;
