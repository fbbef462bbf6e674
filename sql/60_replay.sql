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

-- Emit a fresh event (new id) for an existing row: the row as it is now if
-- the table is watched, else the payload of the row's latest event.
CREATE OR REPLACE FUNCTION webhooks.resend(target regclass, row_key text, event_type text DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    w      webhooks.watched;
    pk     text[];
    row_j  jsonb;
    last   webhooks.events;
    etype  text := event_type;
BEGIN
    SELECT * INTO last FROM webhooks.events e
     WHERE e.source_table = target::text AND e.row_key = resend.row_key
       AND (etype IS NULL OR e.event_type = etype)
     ORDER BY e.txid DESC, e.seq DESC LIMIT 1;
    SELECT * INTO w FROM webhooks.watched x WHERE x.target = resend.target;
    IF FOUND THEN
        SELECT array_agg(a.attname::text) INTO pk
          FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
         WHERE i.indrelid = target AND i.indisprimary;
        IF cardinality(pk) <> 1 THEN
            RAISE EXCEPTION 'webhooks.resend: % needs a single-column primary key', target
                USING ERRCODE = 'feature_not_supported';
        END IF;
        -- The key is read by the column type's input function, and the row
        -- becomes JSON with webhooks_capture's rights (row_payload), as in
        -- capture itself: nothing the table's owner defined runs as the caller.
        EXECUTE format('SELECT webhooks.row_payload(%L::oid, t) FROM %s t WHERE t.%I = %L',
                       w.attnums->>'payload', target, pk[1], row_key) INTO row_j;
        IF row_j IS NULL THEN
            RAISE EXCEPTION 'webhooks.resend: % has no row %', target, row_key USING ERRCODE = 'WH404';
        END IF;
        IF w.options ? 'exclude' THEN
            row_j := row_j - ARRAY(SELECT jsonb_array_elements_text(w.options->'exclude'));
        END IF;
        etype := coalesce(etype, last.event_type, w.entity || '.created');
        RETURN webhooks.emit(etype, row_j,
                             CASE WHEN w.options ? 'tenant_column' THEN row_j->>(w.options->>'tenant_column') END,
                             target::text, row_key);
    END IF;
    IF last.event_id IS NULL THEN
        RAISE EXCEPTION 'webhooks.resend: % is not watched and has no % event for row %', target,
            coalesce(quote_literal(etype), 'recorded'), row_key USING ERRCODE = 'WH404';
    END IF;
    RETURN webhooks.emit(last.event_type, last.payload, last.tenant_id, last.source_table, last.row_key, last.previous);
END
$$;

-- `pgwebhooks endpoint test`: one webhooks.test event for this endpoint
-- alone (its origin, webhooks/test, is one every endpoint skips at
-- fan-out), queued as a pending delivery that the sidecar's retry path
-- sends as it sends any other. Returns the delivery's id.
CREATE OR REPLACE FUNCTION webhooks.endpoint_test(id bigint) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ep  webhooks.endpoints;
    ev  uuid;
    del bigint;
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
    INSERT INTO webhooks.events (event_type, origin, source_table, row_key, payload)
    VALUES ('webhooks.test', 'webhooks/test', 'webhooks.endpoints', ep.id::text,
            jsonb_build_object('test', true, 'message', 'a test event from pgwebhooks endpoint test',
                               'endpoint', jsonb_build_object('id', ep.id, 'name', ep.name,
                                                              'url', webhooks.url_redact(ep.url))))
    RETURNING event_id INTO ev;
    INSERT INTO webhooks.deliveries (event_id, endpoint_id, status, next_attempt_at)
    VALUES (ev, ep.id, 'pending', clock_timestamp())
    RETURNING deliveries.id INTO del;
    PERFORM pg_notify('webhooks', 'retry');
    RETURN del;
END
$$;
