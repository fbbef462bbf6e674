-- Inbound: record a callback once and apply it with its route's handler,
-- in one transaction. Called by the sidecar's HTTP endpoint.

-- Record and apply one callback. Returns the HTTP status to answer with
-- (200 applied, 200 duplicate with the first result, 404 no such route,
-- 422 rejected by the handler) and the JSON to answer. A handler rejects
-- with SQLSTATE 'WH422'; a data error, a violated constraint or a value too
-- big for the app's schema (e.g. a string over an index's size limit) in
-- its writes is the payload's fault too: 422, never a 500, and none of the
-- handler's writes stay.
-- A duplicate of an applied callback is not applied again; a duplicate of
-- a rejected one is tried again (the data may have been fixed meanwhile).
-- Concurrent duplicates wait on the unique key: one applies, the others
-- then see it applied.
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
BEGIN
    SELECT * INTO r FROM webhooks.inbound_routes ir WHERE ir.route = inbound_apply.route AND ir.enabled;
    IF NOT FOUND THEN
        http_status := 404;
        body := jsonb_build_object('success', false, 'error', 'unknown route');
        RETURN;
    END IF;

    INSERT INTO webhooks.inbound AS i (route, idempotency_key, status, payload)
    VALUES (route, idempotency_key, 'rejected', payload)
    ON CONFLICT ON CONSTRAINT inbound_route_key DO UPDATE
        SET attempts = i.attempts + 1, payload = excluded.payload, received_at = now(), error = NULL
      WHERE i.status = 'rejected'
    RETURNING i.id INTO rec_id;

    IF rec_id IS NULL THEN
        SELECT * INTO prior FROM webhooks.inbound i
         WHERE i.route = inbound_apply.route AND i.idempotency_key = inbound_apply.idempotency_key;
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
    PERFORM set_config('webhooks.origin', 'inbound/' || route, true);
    BEGIN
        EXECUTE format('SELECT %s($1)', r.handler) INTO outcome USING payload;
    EXCEPTION
        WHEN SQLSTATE 'WH422' OR data_exception OR integrity_constraint_violation OR program_limit_exceeded THEN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, state = RETURNED_SQLSTATE;
            UPDATE webhooks.inbound i SET status = 'rejected', error = msg WHERE i.id = rec_id;
            PERFORM set_config('webhooks.origin', '', true);
            http_status := 422;
            body := jsonb_build_object('success', false, 'error', msg, 'code', state, 'inboundId', rec_id);
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

-- Add or replace a route (for routes added in SQL: POST /inbound/{route}).
CREATE OR REPLACE FUNCTION webhooks.inbound_route_set(
    route              text,
    handler            regproc,
    idempotency_fields text[] DEFAULT '{}',
    secret             text DEFAULT NULL,
    description        text DEFAULT NULL
) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO webhooks.inbound_routes AS r (route, handler, idempotency_fields, secret, description)
    VALUES (route, handler, idempotency_fields, secret, description)
    ON CONFLICT ON CONSTRAINT inbound_routes_pkey DO UPDATE
       SET handler = excluded.handler, idempotency_fields = excluded.idempotency_fields,
           secret = excluded.secret, description = excluded.description, enabled = true
$$;
