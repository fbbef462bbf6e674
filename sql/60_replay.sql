-- Replay: the functions that fix things by sending again (dead letters
-- retried, a time range replayed, one row resent, a test event).

-- Re-queue every failed or dead delivery (of one endpoint, or all).
CREATE OR REPLACE FUNCTION webhooks.delivery_retry_dead(endpoint_id bigint DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    SELECT count(*) INTO n FROM webhooks.delivery_retry(ARRAY(
        SELECT d.id FROM webhooks.deliveries d
         WHERE d.status IN ('failed', 'dead')
           AND (delivery_retry_dead.endpoint_id IS NULL OR d.endpoint_id = delivery_retry_dead.endpoint_id)));
    RETURN n;
END
$$;

-- Deliver past events to one endpoint again, with their original ids (the
-- receiver can tell a replay from a new event). Events that endpoint wants
-- (patterns and content filter, as at fan-out), since `since`, already
-- handed out; deliveries in flight are left alone.
CREATE OR REPLACE FUNCTION webhooks.replay(endpoint_id bigint, since timestamptz,
                                           now timestamptz DEFAULT clock_timestamp()) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ep webhooks.endpoints;
    n  integer;
BEGIN
    SELECT * INTO ep FROM webhooks.endpoints e WHERE e.id = replay.endpoint_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no endpoint %', endpoint_id USING ERRCODE = 'WH404';
    END IF;
    WITH r AS (
        INSERT INTO webhooks.deliveries AS d (event_id, endpoint_id, status, next_attempt_at, created_at, updated_at)
        SELECT e.event_id, ep.id, 'pending', now, now, now
          FROM webhooks.events e, webhooks.fanout_cursor c
         WHERE e.occurred_at >= since AND (e.txid, e.seq) <= (c.txid, c.seq)
           AND webhooks.endpoint_wants(ep, e.event_type, e.tenant_id, e.origin)
           AND (ep.filter IS NULL OR webhooks.filter_accepts(ep.filter, e))
        ON CONFLICT ON CONSTRAINT deliveries_event_endpoint_key DO UPDATE
           SET status = 'pending', next_attempt_at = now, attempts_base = d.attempts, updated_at = now
         WHERE d.status <> 'delivering'
        RETURNING 1)
    SELECT count(*) INTO n FROM r;
    PERFORM pg_notify('webhooks', 'retry');
    RETURN n;
END
$$;

-- A table as an operator types its name: `app.orders`, `"Task"`, and the
-- way ORMs (Prisma, TypeORM) name tables, mixed case unquoted (`Task`,
-- `app.Task`), which Postgres would fold to lower case. A name with upper
-- case and no quotes is tried as written first, then folded.
CREATE OR REPLACE FUNCTION webhooks.table_named(name text) RETURNS regclass
LANGUAGE plpgsql STABLE AS $$
-- No SET search_path: the name is found as the caller would find it.
DECLARE
    t pg_catalog.regclass;
BEGIN
    IF name IS NULL OR pg_catalog.btrim(name) OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'no table named %', COALESCE(pg_catalog.quote_literal(name), 'NULL') USING ERRCODE = 'undefined_table';
    END IF;
    IF pg_catalog.strpos(name, '"') OPERATOR(pg_catalog.=) 0 AND name OPERATOR(pg_catalog.<>) pg_catalog.lower(name) THEN
        t := pg_catalog.to_regclass((SELECT pg_catalog.string_agg(pg_catalog.quote_ident(u.p), '.' ORDER BY u.o)
                                       FROM pg_catalog.unnest(pg_catalog.string_to_array(name, '.')) WITH ORDINALITY u(p, o)));
    END IF;
    t := COALESCE(t, pg_catalog.to_regclass(name));
    IF t IS NULL THEN
        RAISE EXCEPTION 'no table named %', pg_catalog.quote_literal(name) USING ERRCODE = 'undefined_table',
            HINT = 'Name it as webhooks.watched lists it, e.g. app.orders or app."Task".';
    END IF;
    RETURN t;
END
$$;

-- The type of a row's latest event, for resend by the table's owner (who
-- cannot read webhooks.events): only to a session of the table's owner
-- (or a member of it) or of the sidecar.
CREATE OR REPLACE FUNCTION webhooks.resend_last_type(target regclass, row_key text) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT e.event_type FROM webhooks.events e
     WHERE e.source_table = target::text AND e.row_key = resend_last_type.row_key
       AND (pg_has_role(session_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = target), 'USAGE')
            OR pg_has_role(session_user, 'webhooks_sidecar', 'USAGE'))
     ORDER BY e.txid DESC, e.seq DESC LIMIT 1
$$;
REVOKE ALL ON FUNCTION webhooks.resend_last_type(regclass, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhooks.resend_last_type(regclass, text) TO webhooks_app;

-- Emit a fresh event (new id) for an existing row: the row as it is now if
-- the table is watched, else the payload of the row's latest event.
-- A table whose capture runs its owner's code (a payload function, a cast
-- to json of the owner's) is read and shaped only in the owner's own
-- session: in any other, that code would run with the caller's rights (an
-- operator's, a superuser's), so resend refuses, saying who may. Any other
-- table is read by any caller, running no code of the owner's.
-- Row-level security is off for the read (SET row_security = off), so a
-- table under a policy raises instead of running its owner's policy with
-- the caller's rights (audit N4).
CREATE OR REPLACE FUNCTION webhooks.resend(target regclass, row_key text, event_type text DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET row_security = off AS $$
#variable_conflict use_variable
DECLARE
    w      webhooks.watched;
    pk     text[];
    row_j  jsonb;
    data   jsonb;
    last   webhooks.events;
    etype  text := event_type;
    owner  text;
    fn     text;
BEGIN
    SELECT * INTO w FROM webhooks.watched x WHERE x.target = resend.target;
    IF FOUND THEN
        SELECT array_agg(a.attname::text) INTO pk
          FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
         WHERE i.indrelid = target AND i.indisprimary;
        IF cardinality(pk) <> 1 THEN
            RAISE EXCEPTION 'webhooks.resend: % needs a single-column primary key', target
                USING ERRCODE = 'feature_not_supported';
        END IF;
        IF w.attnums ? 'payload' THEN
            SELECT format('%I.%I', n.nspname, p.proname) INTO fn
              FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = (w.attnums->>'payload')::oid;
        END IF;
        SELECT pg_get_userbyid(c.relowner) INTO owner FROM pg_class c WHERE c.oid = target;
        IF session_user <> owner AND (fn IS NOT NULL OR NOT webhooks.json_cast_ok(target)) THEN
            RAISE EXCEPTION 'webhooks.resend: %''s events are shaped by its owner''s code, which runs only in the owner''s own session, not in one of %',
                            target, session_user
                USING ERRCODE = 'insufficient_privilege',
                      HINT = format('Connect as role %I and run SELECT webhooks.resend(...) there.', owner);
        END IF;
        -- The key is read by the column type's input function.
        EXECUTE format('SELECT to_jsonb(t), %s FROM %s t WHERE t.%I = %L',
                       CASE WHEN fn IS NULL THEN 'NULL::jsonb' ELSE fn || '(t)' END, target, pk[1], row_key)
           INTO row_j, data;
        IF row_j IS NULL THEN
            RAISE EXCEPTION 'webhooks.resend: % has no row %', target, row_key USING ERRCODE = 'WH404';
        END IF;
        IF fn IS NOT NULL AND data IS NULL THEN
            RAISE EXCEPTION 'webhooks.resend: the payload function % returned NULL for row % of %', fn, row_key, target
                USING ERRCODE = 'null_value_not_allowed';
        END IF;
        data := coalesce(data, row_j);
        IF w.options ? 'exclude' THEN
            data := data - ARRAY(SELECT jsonb_array_elements_text(w.options->'exclude'));
        END IF;
        etype := coalesce(etype, webhooks.resend_last_type(target, row_key), w.entity || '.created');
        IF lower(etype) LIKE 'webhooks.%' THEN
            RAISE EXCEPTION 'webhooks.resend: % events are pgwebhooks'' own', etype USING ERRCODE = 'invalid_parameter_value';
        END IF;
        RETURN webhooks.emit(etype, data,
                             CASE WHEN w.options ? 'tenant_column' THEN row_j->>(w.options->>'tenant_column') END,
                             target::text, row_key);
    END IF;
    SELECT * INTO last FROM webhooks.events e
     WHERE e.source_table = target::text AND e.row_key = resend.row_key
       AND (etype IS NULL OR e.event_type = etype)
     ORDER BY e.txid DESC, e.seq DESC LIMIT 1;
    IF last.event_id IS NULL THEN
        RAISE EXCEPTION 'webhooks.resend: % is not watched and has no % event for row %', target,
            coalesce(quote_literal(etype), 'recorded'), row_key USING ERRCODE = 'WH404';
    END IF;
    RETURN webhooks.emit(last.event_type, last.payload, last.tenant_id, last.source_table, last.row_key, last.previous);
END
$$;

-- `pgwebhooks endpoint test`: one event for this endpoint alone (origin
-- webhooks/test, which every endpoint skips at fan-out), queued as a
-- pending delivery that the sidecar's retry path sends as it sends any
-- other. Which event:
-- * neither argument: the webhooks.test ping (sent as the standard
--   envelope, never through a body template: it must not pass for one of
--   the app's events);
-- * event_type alone: a copy (new id) of the latest stored event of that
--   type this endpoint would receive (its patterns, tenant, ignored
--   origins and content filter, as at fan-out), shaped as a real delivery;
-- * event_type and sample: an event of that type whose data is sample.
-- Returns the delivery's id.
DROP FUNCTION IF EXISTS webhooks.endpoint_test(bigint);
CREATE OR REPLACE FUNCTION webhooks.endpoint_test(id bigint, event_type text DEFAULT NULL, sample jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    ep   webhooks.endpoints;
    last webhooks.events;
    ev   uuid;
    del  bigint;
BEGIN
    SELECT * INTO ep FROM webhooks.endpoints e WHERE e.id = endpoint_test.id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no endpoint %', endpoint_test.id USING ERRCODE = 'WH404';
    END IF;
    IF NOT ep.enabled THEN
        RAISE EXCEPTION 'endpoint % is paused (%): enable it first (pgwebhooks endpoint enable %)',
                        ep.id, coalesce(ep.disabled_reason, 'no reason given'), ep.id
            USING ERRCODE = 'WH409';
    END IF;
    IF sample IS NOT NULL AND event_type IS NULL THEN
        RAISE EXCEPTION 'a sample needs an event type: the type it is sent as'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF sample = 'null'::jsonb THEN
        RAISE EXCEPTION 'a sample is the event''s data: a JSON value other than null'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF event_type IS NULL THEN
        INSERT INTO webhooks.events (event_type, origin, source_table, row_key, payload)
        VALUES ('webhooks.test', 'webhooks/test', 'webhooks.endpoints', ep.id::text,
                jsonb_build_object('test', true, 'message', 'a test event from pgwebhooks endpoint test',
                                   'endpoint', jsonb_build_object('id', ep.id, 'name', ep.name,
                                                                  'url', webhooks.url_redact(ep.url))))
        RETURNING event_id INTO ev;
    ELSE
        IF btrim(event_type) = '' THEN
            RAISE EXCEPTION 'an empty event type' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF NOT webhooks.endpoint_wants(ep, event_type, ep.tenant_id, NULL) THEN
            RAISE EXCEPTION 'endpoint % does not receive % events (event types: %)', ep.id, quote_literal(event_type),
                            array_to_string(ep.event_types, ', ')
                            || CASE WHEN cardinality(ep.exclude_types) > 0
                                    THEN '; excluded: ' || array_to_string(ep.exclude_types, ', ') ELSE '' END
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF sample IS NOT NULL THEN
            INSERT INTO webhooks.events (event_type, origin, tenant_id, payload)
            VALUES (event_type, 'webhooks/test', ep.tenant_id, sample)
            RETURNING event_id INTO ev;
        ELSE
            SELECT * INTO last FROM webhooks.events e
             WHERE e.event_type = event_type
               AND webhooks.endpoint_wants(ep, e.event_type, e.tenant_id, e.origin)
               AND (ep.filter IS NULL OR webhooks.filter_accepts(ep.filter, e))
             ORDER BY e.txid DESC, e.seq DESC LIMIT 1;
            IF last.event_id IS NULL THEN
                RAISE EXCEPTION 'no stored % event that endpoint % would receive', quote_literal(event_type), ep.id
                    USING ERRCODE = 'WH404',
                          HINT = 'Write one in the app first, or give a sample of its data (pgwebhooks endpoint test --event-type TYPE --sample FILE).';
            END IF;
            INSERT INTO webhooks.events (event_type, origin, tenant_id, source_table, row_key, payload, previous)
            VALUES (last.event_type, 'webhooks/test', last.tenant_id, last.source_table, last.row_key,
                    last.payload, last.previous)
            RETURNING event_id INTO ev;
        END IF;
    END IF;
    INSERT INTO webhooks.deliveries (event_id, endpoint_id, status, next_attempt_at)
    VALUES (ev, ep.id, 'pending', clock_timestamp())
    RETURNING deliveries.id INTO del;
    PERFORM pg_notify('webhooks', 'retry');
    RETURN del;
END
$$;
