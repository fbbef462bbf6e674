-- Operations: what a DBA reads first and the functions that fix things,
-- all callable from psql. Re-applied by every `migrate`.

-- Does pattern (with * wildcards) match text?
CREATE OR REPLACE FUNCTION webhooks.matches(pattern text, subject text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT subject LIKE replace(replace(replace(replace(pattern, '\', '\\'), '%', '\%'), '_', '\_'), '*', '%')
$$;

-- An endpoint URL as it may be shown to anyone reading the views: scheme,
-- host and port; the path and query (a Make.com URL's token) and any
-- user:password@ redacted: 'https://hook.eu1.make.com/…'. (The same as
-- deliver::target::redact in Rust.)
CREATE OR REPLACE FUNCTION webhooks.url_redact(url text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN m IS NULL THEN '…'
                ELSE m[1] || m[2] || CASE WHEN m[3] IN ('', '/') THEN m[3] ELSE '/…' END END
      FROM (SELECT regexp_match(url, '^([^:/?#]*://)(?:[^/?#]*@)?([^/?#]*)(.*)$') AS m) x
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

-- What is waiting, per endpoint; plus a row (endpoint_id NULL) for events
-- not yet handed to any replica.
-- Events past the fan-out cursor (read first, so the scan uses the index;
-- planned at every call, as fanout_probe is: a generic plan scans the
-- whole outbox, and the sidecar's gauges call this every few seconds).
CREATE OR REPLACE FUNCTION webhooks.fanout_pending(OUT events bigint, OUT oldest timestamptz)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    cur_txid xid8;
    cur_seq  bigint;
BEGIN
    SELECT c.txid, c.seq INTO cur_txid, cur_seq FROM webhooks.fanout_cursor c;
    SELECT count(*), min(e.occurred_at) INTO events, oldest
      FROM webhooks.events e WHERE (e.txid, e.seq) > (cur_txid, cur_seq);
END
$$;

CREATE OR REPLACE VIEW webhooks.backlog AS
    SELECT NULL::bigint AS endpoint_id, '(not yet fanned out)'::text AS endpoint, NULL::boolean AS enabled,
           f.events AS pending, 0::bigint AS delivering,
           now() - f.oldest AS oldest_age, NULL::timestamptz AS next_attempt_at
      FROM webhooks.fanout_pending() f
    UNION ALL
    SELECT ep.id, coalesce(ep.name, webhooks.url_redact(ep.url)), ep.enabled,
           count(d.id) FILTER (WHERE d.status = 'pending'),
           count(d.id) FILTER (WHERE d.status = 'delivering'),
           now() - min(d.created_at),
           min(d.next_attempt_at) FILTER (WHERE d.status = 'pending')
      FROM webhooks.endpoints ep
      LEFT JOIN webhooks.deliveries d ON d.endpoint_id = ep.id AND d.status IN ('pending', 'delivering')
     GROUP BY ep.id;

-- Failed attempts of the last 7 days, newest first.
CREATE OR REPLACE VIEW webhooks.failures AS
    SELECT a.started_at, a.endpoint_id, d.id AS delivery_id, d.event_id, e.event_type, a.attempt,
           a.status_code, a.error, a.response_excerpt, a.duration_ms, d.status AS delivery_status
      FROM webhooks.attempts a
      JOIN webhooks.deliveries d ON d.id = a.delivery_id
      LEFT JOIN webhooks.events e ON e.event_id = d.event_id
     WHERE a.started_at > now() - interval '7 days'
       AND (a.status_code IS NULL OR a.status_code NOT BETWEEN 200 AND 299)
     ORDER BY a.started_at DESC;

-- Deliveries that will not go out again unless someone retries them.
CREATE OR REPLACE VIEW webhooks.dead_letters AS
    SELECT d.id AS delivery_id, d.status, d.endpoint_id, ep.name AS endpoint, d.event_id, e.event_type,
           e.occurred_at, d.attempts, d.last_status, d.last_error, d.updated_at AS given_up_at
      FROM webhooks.deliveries d
      JOIN webhooks.endpoints ep ON ep.id = d.endpoint_id
      LEFT JOIN webhooks.events e ON e.event_id = d.event_id
     WHERE d.status IN ('dead', 'failed')
     ORDER BY d.updated_at DESC;

-- How each endpoint is doing over the last hour.
CREATE OR REPLACE VIEW webhooks.endpoint_health AS
    SELECT ep.id AS endpoint_id, coalesce(ep.name, webhooks.url_redact(ep.url)) AS endpoint,
           CASE WHEN ep.enabled THEN 'enabled'
                WHEN ep.breaker_opened_at IS NOT NULL THEN 'circuit open'
                ELSE 'paused' END AS state,
           ep.disabled_reason,
           h.attempts AS attempts_1h,
           h.succeeded AS succeeded_1h,
           round(100.0 * h.succeeded / nullif(h.attempts, 0), 1) AS success_rate_pct,
           round(h.avg_ms::numeric, 1) AS avg_latency_ms,
           round(h.p95_ms::numeric, 1) AS p95_latency_ms,
           (SELECT count(*) FROM (SELECT a.status_code FROM webhooks.attempts a
                                   WHERE a.endpoint_id = ep.id ORDER BY a.started_at DESC LIMIT 100) r
             WHERE r.status_code IS NULL OR r.status_code NOT BETWEEN 200 AND 299) AS recent_failures,
           (SELECT max(a.started_at) FROM webhooks.attempts a
             WHERE a.endpoint_id = ep.id AND a.status_code BETWEEN 200 AND 299) AS last_success_at,
           (SELECT count(*) FROM webhooks.deliveries d WHERE d.endpoint_id = ep.id AND d.status = 'pending') AS pending,
           (SELECT count(*) FROM webhooks.deliveries d WHERE d.endpoint_id = ep.id AND d.status IN ('dead', 'failed')) AS dead,
           -- The latest failed attempt (appended: the columns above keep their places).
           f.started_at AS last_failure_at,
           f.status_code AS last_failure_status,
           f.error AS last_failure_error,
           f.response_excerpt AS last_failure_excerpt
      FROM webhooks.endpoints ep
      LEFT JOIN LATERAL (
          SELECT count(*) AS attempts,
                 count(*) FILTER (WHERE a.status_code BETWEEN 200 AND 299) AS succeeded,
                 avg(a.duration_ms) AS avg_ms,
                 percentile_cont(0.95) WITHIN GROUP (ORDER BY a.duration_ms) AS p95_ms
            FROM webhooks.attempts a
           WHERE a.endpoint_id = ep.id AND a.started_at > now() - interval '1 hour') h ON true
      LEFT JOIN LATERAL (
          SELECT a.started_at, a.status_code, a.error, a.response_excerpt
            FROM webhooks.attempts a
           WHERE a.endpoint_id = ep.id AND a.started_at > now() - interval '7 days'
             AND (a.status_code IS NULL OR a.status_code NOT BETWEEN 200 AND 299)
           ORDER BY a.started_at DESC
           LIMIT 1) f ON true;

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
        RAISE EXCEPTION 'no endpoint %', endpoint_id USING ERRCODE = 'no_data_found';
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
            RAISE EXCEPTION 'webhooks.resend: % has no row %', target, row_key USING ERRCODE = 'no_data_found';
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
            coalesce(quote_literal(etype), 'recorded'), row_key USING ERRCODE = 'no_data_found';
    END IF;
    RETURN webhooks.emit(last.event_type, last.payload, last.tenant_id, last.source_table, last.row_key, last.previous);
END
$$;

-- Retention: remove delivered history older than `keep`, at most `batch`
-- rows per table per call (call it again while it returns > 0). Never
-- removes an event that is not yet handed out, or that still has a
-- delivery that is not delivered (dead letters stay until handled).
CREATE OR REPLACE FUNCTION webhooks.retention_run(keep interval, batch integer DEFAULT 1000,
                                                  now timestamptz DEFAULT clock_timestamp())
RETURNS TABLE (attempts bigint, deliveries bigint, events bigint, inbound bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cutoff   timestamptz := now - keep;
    cur_txid xid8;
    cur_seq  bigint;
BEGIN
    WITH old AS (
        SELECT d.id FROM webhooks.deliveries d
         WHERE d.status = 'delivered' AND d.updated_at < cutoff
         LIMIT batch FOR UPDATE SKIP LOCKED
    ), a AS (
        DELETE FROM webhooks.attempts x USING old WHERE x.delivery_id = old.id RETURNING 1
    ), d AS (
        DELETE FROM webhooks.deliveries x USING old WHERE x.id = old.id RETURNING 1
    )
    SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM d) INTO attempts, deliveries;

    SELECT c.txid, c.seq INTO cur_txid, cur_seq FROM webhooks.fanout_cursor c;
    WITH old AS (
        SELECT e.event_id FROM webhooks.events e
         WHERE e.occurred_at < cutoff AND (e.txid, e.seq) <= (cur_txid, cur_seq)
           AND NOT EXISTS (SELECT 1 FROM webhooks.deliveries d WHERE d.event_id = e.event_id)
           AND NOT EXISTS (SELECT 1 FROM webhooks.fanout_batches b
                            WHERE (e.txid, e.seq) > (b.from_txid, b.from_seq)
                              AND (e.txid, e.seq) <= (b.to_txid, b.to_seq))
         LIMIT batch
    ), e AS (
        DELETE FROM webhooks.events x USING old WHERE x.event_id = old.event_id RETURNING 1
    )
    SELECT count(*) INTO events FROM e;

    WITH old AS (
        SELECT i.id FROM webhooks.inbound i WHERE i.received_at < cutoff AND i.status IN ('applied', 'rejected') LIMIT batch
    ), i AS (
        DELETE FROM webhooks.inbound x USING old WHERE x.id = old.id RETURNING 1
    )
    SELECT count(*) INTO inbound FROM i;
    RETURN NEXT;
END
$$;

-- The circuit breaker: pause an endpoint that keeps failing (its backlog
-- waits), and resume it when a probe succeeds. Operator pauses are never
-- resumed by the breaker.
CREATE OR REPLACE FUNCTION webhooks.endpoint_trip(id bigint, reason text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE webhooks.endpoints e
       SET enabled = false, disabled_reason = reason, breaker_opened_at = now(), updated_at = now()
     WHERE e.id = endpoint_trip.id AND e.enabled;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM webhooks.endpoint_event('webhooks.endpoint.circuit_opened', endpoint_trip.id,
                                    jsonb_build_object('reason', reason));
    RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION webhooks.endpoint_close_breaker(id bigint) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE webhooks.endpoints e
       SET enabled = true, disabled_reason = NULL, breaker_opened_at = NULL, updated_at = now()
     WHERE e.id = endpoint_close_breaker.id AND NOT e.enabled AND e.breaker_opened_at IS NOT NULL;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM webhooks.endpoint_event('webhooks.endpoint.circuit_closed', endpoint_close_breaker.id, '{}');
    -- It answers again: its backlog goes now, each with a fresh retry
    -- budget (attempts made while it was down do not count).
    UPDATE webhooks.deliveries d SET next_attempt_at = least(d.next_attempt_at, now()), attempts_base = d.attempts
     WHERE d.endpoint_id = endpoint_close_breaker.id AND d.status = 'pending';
    PERFORM pg_notify('webhooks', 'retry');
    RETURN true;
END
$$;

-- Claim one pending delivery of an endpoint the breaker paused, to probe it.
CREATE OR REPLACE FUNCTION webhooks.delivery_claim_probe(
    replica     text,
    endpoint_id bigint,
    lease       interval,
    now         timestamptz DEFAULT clock_timestamp()
) RETURNS TABLE (
    delivery_id bigint, endpoint_id bigint, attempt integer, budget_used integer, event_id uuid,
    event_type text, tenant_id text, origin text, occurred_at timestamptz, payload text, previous text
)
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    WITH picked AS (
        SELECT d.id FROM webhooks.deliveries d
         WHERE d.status = 'pending' AND d.endpoint_id = delivery_claim_probe.endpoint_id
         ORDER BY d.next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE webhooks.deliveries d
           SET status = 'delivering', claimed_by = replica, lease_until = now + lease, updated_at = now
          FROM picked WHERE d.id = picked.id
        RETURNING d.id, d.endpoint_id, d.attempts + 1 AS attempt, d.attempts - d.attempts_base AS used, d.event_id
    )
    SELECT c.id, c.endpoint_id, c.attempt, c.used, c.event_id, e.event_type, e.tenant_id, e.origin,
           e.occurred_at, e.payload::text, e.previous::text
      FROM claimed c LEFT JOIN webhooks.events e ON e.event_id = c.event_id
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
        RAISE EXCEPTION 'no endpoint %', endpoint_test.id USING ERRCODE = 'no_data_found';
    END IF;
    IF NOT ep.enabled THEN
        RAISE EXCEPTION 'endpoint % is paused (%): enable it first (pgwebhooks endpoint enable %)',
                        ep.id, coalesce(ep.disabled_reason, 'no reason given'), ep.id
            USING ERRCODE = 'object_not_in_prerequisite_state';
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
