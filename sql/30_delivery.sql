-- Delivery: recording attempts and claiming retries. Two paths:
--   first attempts: batch_claim -> (HTTP) -> delivery_insert + batch_complete
--   retries:        delivery_claim -> (HTTP) -> delivery_record
-- No function here is ever called with a transaction open across HTTP.
-- Every function that changes a delivery checks the caller's lease and
-- takes `now` as a parameter; their bookkeeping commits asynchronously
-- (see sql/20_fanout.sql).

-- Record first attempts (and deliveries routed straight to the retry path:
-- attempts = 0, no attempt row). One call per flush, any number of rows.
-- A row that already exists (a rescued batch delivered twice) is left alone.
CREATE OR REPLACE FUNCTION webhooks.delivery_insert(
    replica          text,
    event_ids        uuid[],
    endpoint_ids     bigint[],
    statuses         text[],
    attempt_counts   integer[],
    next_attempt_ats timestamptz[],
    status_codes     integer[],
    errors           text[],
    started_ats      timestamptz[],
    durations_ms     double precision[],
    excerpts         text[],
    ordered          boolean[] DEFAULT NULL,
    now              timestamptz DEFAULT clock_timestamp()
) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    n integer;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);  -- bookkeeping: see the note at the top
    WITH u AS (
        SELECT * FROM unnest(event_ids, endpoint_ids, statuses, attempt_counts, next_attempt_ats,
                             status_codes, errors, started_ats, durations_ms, excerpts,
                             coalesce(ordered, array_fill(false, ARRAY[cardinality(event_ids)])))
                   AS u(event_id, endpoint_id, status, attempts, next_at, code, error, started_at, duration, excerpt,
                        ordered)
    ), d AS (
        INSERT INTO webhooks.deliveries AS d (event_id, endpoint_id, status, attempts, next_attempt_at,
                                              last_status, last_error, created_at, updated_at,
                                              aggregate, event_txid, event_seq)
        SELECT u.event_id, u.endpoint_id, u.status, u.attempts, u.next_at, u.code, u.error, now, now,
               ev.aggregate, ev.txid, ev.seq
          FROM u
          -- Only ordered endpoints look their event up: OFFSET 0 keeps the
          -- subquery from being flattened, so `u.ordered` stays a one-time
          -- filter inside it and the others make no index probe (flattened,
          -- it became a join filter applied after the probe).
          LEFT JOIN LATERAL (SELECT coalesce(e.source_table, '') || ':' || coalesce(e.row_key, e.event_id::text) AS aggregate,
                                    e.txid, e.seq
                               FROM webhooks.events e WHERE u.ordered AND e.event_id = u.event_id
                             OFFSET 0) ev ON true
         -- An endpoint deleted meanwhile takes its deliveries with it.
         WHERE EXISTS (SELECT 1 FROM webhooks.endpoints ep WHERE ep.id = u.endpoint_id)
        ON CONFLICT ON CONSTRAINT deliveries_event_endpoint_key DO NOTHING
        RETURNING d.id, d.event_id, d.endpoint_id
    ), a AS (
        INSERT INTO webhooks.attempts (delivery_id, attempt, started_at, duration_ms, status_code, error,
                                       response_excerpt, replica, endpoint_id)
        SELECT d.id, 1, u.started_at, u.duration, u.code, u.error, u.excerpt, replica, d.endpoint_id
          FROM d JOIN u ON u.event_id = d.event_id AND u.endpoint_id = d.endpoint_id
         WHERE u.attempts > 0 AND u.started_at IS NOT NULL
        ON CONFLICT ON CONSTRAINT attempts_pkey DO NOTHING
        RETURNING 1
    )
    SELECT count(*)::integer INTO n FROM d;
    RETURN n;
END
$$;

-- Claim due retries, at most rooms[i] for endpoint endpoint_ids[i] (what the
-- replica can take for that endpoint now), skipping disabled endpoints.
CREATE OR REPLACE FUNCTION webhooks.delivery_claim(
    replica      text,
    endpoint_ids bigint[],
    rooms        integer[],
    lease        interval,
    now          timestamptz DEFAULT clock_timestamp()
) RETURNS TABLE (
    delivery_id bigint,
    endpoint_id bigint,
    attempt     integer,
    budget_used integer,
    event_id    uuid,
    event_type  text,
    tenant_id   text,
    origin      text,
    occurred_at timestamptz,
    payload     text,
    previous    text
)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);  -- bookkeeping: see the note at the top
    RETURN QUERY
        WITH picked AS (
            SELECT p.id
              FROM unnest(endpoint_ids, rooms) AS r(endpoint_id, room)
              JOIN webhooks.endpoints ep ON ep.id = r.endpoint_id AND ep.enabled
              CROSS JOIN LATERAL (
                  SELECT d.id FROM webhooks.deliveries d
                   WHERE d.status = 'pending' AND d.endpoint_id = r.endpoint_id AND d.next_attempt_at <= now
                     -- An ordered endpoint takes only the head of each row's
                     -- events, and nothing of a row with a delivery in flight.
                     AND (NOT ep.ordered OR d.aggregate IS NULL OR NOT EXISTS (
                             SELECT 1 FROM webhooks.deliveries o
                              WHERE o.endpoint_id = d.endpoint_id AND o.aggregate = d.aggregate
                                AND o.status IN ('pending', 'delivering') AND o.id <> d.id
                                AND (o.status = 'delivering' OR (o.event_txid, o.event_seq) < (d.event_txid, d.event_seq))))
                   ORDER BY d.next_attempt_at
                   LIMIT r.room
                   FOR UPDATE OF d SKIP LOCKED) p
        ), claimed AS (
            UPDATE webhooks.deliveries d
               SET status = 'delivering', claimed_by = replica, lease_until = now + lease, updated_at = now
              FROM picked WHERE d.id = picked.id
            RETURNING d.id, d.endpoint_id, d.attempts + 1 AS attempt, d.attempts - d.attempts_base AS used, d.event_id
        )
        SELECT c.id, c.endpoint_id, c.attempt, c.used, c.event_id, e.event_type, e.tenant_id, e.origin,
               e.occurred_at, e.payload::text, e.previous::text
          FROM claimed c LEFT JOIN webhooks.events e ON e.event_id = c.event_id;
END
$$;

-- When the next retry of any enabled endpoint is due (NULL: none pending).
CREATE OR REPLACE FUNCTION webhooks.delivery_next_due() RETURNS timestamptz
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT min(n.next_attempt_at)
      FROM webhooks.endpoints ep
      CROSS JOIN LATERAL (
          SELECT d.next_attempt_at FROM webhooks.deliveries d
           WHERE d.status = 'pending' AND d.endpoint_id = ep.id
           ORDER BY d.next_attempt_at LIMIT 1) n
     WHERE ep.enabled
$$;

-- Record the outcome of claimed retries. The delivery's state changes only
-- where the lease is still ours; the attempt row is written either way (the
-- request really was sent), unless another replica already recorded an
-- attempt under the same number. Returns the deliveries updated.
CREATE OR REPLACE FUNCTION webhooks.delivery_record(
    replica          text,
    ids              bigint[],
    statuses         text[],
    attempt_counts   integer[],
    next_attempt_ats timestamptz[],
    status_codes     integer[],
    errors           text[],
    started_ats      timestamptz[],
    durations_ms     double precision[],
    excerpts         text[],
    now              timestamptz DEFAULT clock_timestamp()
) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    n    integer;
    dead jsonb;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);  -- bookkeeping: see the note at the top
    WITH u AS (
        SELECT * FROM unnest(ids, statuses, attempt_counts, next_attempt_ats, status_codes, errors,
                             started_ats, durations_ms, excerpts)
                   AS u(id, status, attempts, next_at, code, error, started_at, duration, excerpt)
    ), d AS (
        UPDATE webhooks.deliveries d
           SET status = u.status, attempts = u.attempts, next_attempt_at = u.next_at,
               last_status = coalesce(u.code, CASE WHEN u.started_at IS NULL THEN d.last_status END),
               last_error = CASE WHEN u.started_at IS NULL THEN coalesce(u.error, d.last_error) ELSE u.error END,
               claimed_by = NULL, lease_until = NULL, updated_at = now
          FROM u
         WHERE d.id = u.id AND d.status = 'delivering' AND d.claimed_by = replica
        RETURNING d.id, d.endpoint_id, d.event_id, d.status
    ), a AS (
        INSERT INTO webhooks.attempts (delivery_id, attempt, started_at, duration_ms, status_code, error,
                                       response_excerpt, replica, endpoint_id)
        -- The statement's snapshot: every delivery that still exists,
        -- whether this call updates it or not.
        SELECT u.id, u.attempts, u.started_at, u.duration, u.code, u.error, u.excerpt, replica, x.endpoint_id
          FROM u JOIN webhooks.deliveries x ON x.id = u.id
         WHERE u.started_at IS NOT NULL
        ON CONFLICT ON CONSTRAINT attempts_pkey DO NOTHING
        RETURNING 1
    )
    SELECT count(*)::integer,
           jsonb_agg(jsonb_build_object('endpoint', d.endpoint_id, 'delivery', d.id, 'event', d.event_id))
               FILTER (WHERE d.status = 'dead')
      INTO n, dead FROM d;
    IF dead IS NOT NULL THEN
        PERFORM webhooks.dead_notice(dead, now);
    END IF;
    RETURN n;
END
$$;

-- Dead letters, told as webhooks.delivery.dead: at most one event per
-- endpoint per minute, counting every dead letter since the last one and
-- naming the first of them. (A count left at the end of a minute goes out
-- with the endpoint's next dead letter.)
CREATE OR REPLACE FUNCTION webhooks.dead_notice(dead jsonb, now timestamptz DEFAULT clock_timestamp()) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    s webhooks.dead_notices;
BEGIN
    FOR r IN SELECT (x->>'endpoint')::bigint AS ep, count(*)::integer AS n,
                    min((x->>'delivery')::bigint) AS first_delivery,
                    (array_agg((x->>'event')::uuid ORDER BY (x->>'delivery')::bigint))[1] AS first_event
               FROM jsonb_array_elements(dead) x GROUP BY 1 ORDER BY 1 LOOP
        s := NULL;
        INSERT INTO webhooks.dead_notices AS dn (endpoint_id, pending, first_delivery_id, first_event_id)
        SELECT r.ep, r.n, r.first_delivery, r.first_event
         WHERE EXISTS (SELECT 1 FROM webhooks.endpoints e WHERE e.id = r.ep)
        ON CONFLICT ON CONSTRAINT dead_notices_pkey DO UPDATE
           SET pending = dn.pending + excluded.pending,
               first_delivery_id = coalesce(dn.first_delivery_id, excluded.first_delivery_id),
               first_event_id = coalesce(dn.first_event_id, excluded.first_event_id)
        RETURNING * INTO s;
        IF s.endpoint_id IS NOT NULL
           AND (s.last_emitted_at IS NULL OR s.last_emitted_at <= now - interval '1 minute') THEN
            UPDATE webhooks.dead_notices dn
               SET last_emitted_at = now, pending = 0, first_delivery_id = NULL, first_event_id = NULL
             WHERE dn.endpoint_id = r.ep;
            PERFORM webhooks.endpoint_event('webhooks.delivery.dead', r.ep,
                jsonb_build_object('count', s.pending, 'firstDeliveryId', s.first_delivery_id,
                                   'firstEventId', s.first_event_id));
        END IF;
    END LOOP;
END
$$;

-- Leases that ran out (a replica died mid-attempt): back to pending.
CREATE OR REPLACE FUNCTION webhooks.delivery_rescue(now timestamptz DEFAULT clock_timestamp()) RETURNS integer
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    WITH d AS (
        UPDATE webhooks.deliveries d
           SET status = 'pending', claimed_by = NULL, lease_until = NULL, next_attempt_at = now, updated_at = now
         WHERE d.status = 'delivering' AND d.lease_until < now
        RETURNING 1)
    SELECT count(*)::integer FROM d
$$;

-- Operator retry: failed or dead deliveries (or any given ids) go back to
-- pending with a fresh retry schedule. Returns the ids re-queued.
CREATE OR REPLACE FUNCTION webhooks.delivery_retry(ids bigint[], now timestamptz DEFAULT clock_timestamp())
RETURNS SETOF bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
        UPDATE webhooks.deliveries d
           SET status = 'pending', next_attempt_at = now, attempts_base = d.attempts, updated_at = now
         WHERE d.id = ANY (ids) AND d.status IN ('failed', 'dead', 'pending')
        RETURNING d.id;
    PERFORM pg_notify('webhooks', 'retry');
END
$$;

-- Pause (disable) an endpoint with a reason; its deliveries wait, nothing is
-- dropped. Resume re-enables it and its backlog drains.
-- An operational event about endpoint `ep` (webhooks.endpoint.paused, ...):
-- delivered like any other to endpoints whose patterns name webhooks.…
-- events, never to `ep` itself (its origin, webhooks/endpoint/<id>, is one
-- every endpoint skips when it is its own).
CREATE OR REPLACE FUNCTION webhooks.endpoint_event(event_type text, ep bigint, data jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO webhooks.events (event_type, origin, source_table, row_key, payload)
    SELECT endpoint_event.event_type, 'webhooks/endpoint/' || e.id, 'webhooks.endpoints', e.id::text,
           jsonb_build_object('endpoint', jsonb_build_object('id', e.id, 'name', e.name,
                                                             'url', webhooks.url_redact(e.url)))
           || coalesce(data, '{}')
      FROM webhooks.endpoints e WHERE e.id = ep;
    PERFORM webhooks.wake();
END
$$;

-- Pacing shared by every replica (GCRA). Grants up to `wanted` sends to an
-- endpoint limited to `rate` per `per`, so that no window of length `per`
-- ever holds more than `rate` sends: a burst of rate/10, then an even pace.
-- Returns the grant and, when short, how long until the next send is due.
CREATE OR REPLACE FUNCTION webhooks.endpoint_pace(
    endpoint_id bigint,
    wanted      integer,
    rate        integer,
    per         interval,
    now         timestamptz DEFAULT clock_timestamp()
) RETURNS TABLE (granted integer, wait_ms double precision)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    burst integer := greatest(1, rate / 10);
    step  double precision := extract(epoch FROM per) * 1000 / greatest(1, rate - burst);
    due   timestamptz;
    n     integer;
BEGIN
    INSERT INTO webhooks.endpoint_pacing AS p (endpoint_id, tat) VALUES (endpoint_pace.endpoint_id, now)
    ON CONFLICT ON CONSTRAINT endpoint_pacing_pkey DO NOTHING;
    SELECT greatest(p.tat, now) INTO due FROM webhooks.endpoint_pacing p
     WHERE p.endpoint_id = endpoint_pace.endpoint_id FOR UPDATE;
    n := least(wanted, floor((extract(epoch FROM now - due) * 1000 + burst * step) / step)::integer);
    n := greatest(n, 0);
    due := due + make_interval(secs => n * step / 1000);
    UPDATE webhooks.endpoint_pacing p SET tat = due WHERE p.endpoint_id = endpoint_pace.endpoint_id;
    granted := n;
    wait_ms := CASE WHEN n < wanted
                    THEN greatest(0, extract(epoch FROM due - now) * 1000 - (burst - 1) * step) END;
    RETURN NEXT;
END
$$;
