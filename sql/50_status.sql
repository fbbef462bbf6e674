-- Status: what a DBA reads first, all callable from psql (the backlog,
-- failures, dead letters, each endpoint's health).

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

-- Latency histogram bounds, in ms: bucket b (width_bucket) holds
-- [bounds[b], bounds[b + 1]); bucket 0 is below the first bound.
CREATE OR REPLACE FUNCTION webhooks.latency_bounds() RETURNS double precision[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT '{10,25,50,100,250,500,1000,2500,5000,10000}'::double precision[]
$$;

-- Adds a statement's new attempts to webhooks.attempt_minutes (V16): one
-- grouped upsert, rows in key order so that concurrent recorders lock them
-- in the same order. No SET clause, every name qualified: it runs as the
-- writer (webhooks_sidecar may write both tables).
CREATE OR REPLACE FUNCTION webhooks.attempt_minutes_add() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhooks.attempt_minutes AS m (endpoint_id, minute, bucket, attempts, succeeded, sum_ms, max_ms)
    SELECT a.endpoint_id, pg_catalog.date_trunc('minute', a.started_at),
           pg_catalog.width_bucket(COALESCE(a.duration_ms, 0), webhooks.latency_bounds()),
           pg_catalog.count(*), pg_catalog.count(*) FILTER (WHERE a.status_code BETWEEN 200 AND 299),
           COALESCE(pg_catalog.sum(a.duration_ms), 0), COALESCE(pg_catalog.max(a.duration_ms), 0)
      FROM new_attempts a
     WHERE a.endpoint_id IS NOT NULL AND a.started_at IS NOT NULL
     GROUP BY 1, 2, 3
     ORDER BY 1, 2, 3
    ON CONFLICT ON CONSTRAINT attempt_minutes_pkey DO UPDATE
       SET attempts = m.attempts OPERATOR(pg_catalog.+) EXCLUDED.attempts,
           succeeded = m.succeeded OPERATOR(pg_catalog.+) EXCLUDED.succeeded,
           sum_ms = m.sum_ms OPERATOR(pg_catalog.+) EXCLUDED.sum_ms,
           max_ms = GREATEST(m.max_ms, EXCLUDED.max_ms);
    RETURN NULL;
END
$$;

-- The trigger, and the first fill from the last 8 days of attempts, once
-- and together: creating the trigger locks out concurrent inserts until
-- this transaction commits, so the fill sees exactly the attempts the
-- trigger will not.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                    WHERE tgrelid = 'webhooks.attempts'::regclass AND tgname = 'webhooks_attempt_minutes') THEN
        CREATE TRIGGER webhooks_attempt_minutes AFTER INSERT ON webhooks.attempts
            REFERENCING NEW TABLE AS new_attempts
            FOR EACH STATEMENT EXECUTE FUNCTION webhooks.attempt_minutes_add();
        INSERT INTO webhooks.attempt_minutes (endpoint_id, minute, bucket, attempts, succeeded, sum_ms, max_ms)
        SELECT a.endpoint_id, date_trunc('minute', a.started_at),
               width_bucket(COALESCE(a.duration_ms, 0), webhooks.latency_bounds()),
               count(*), count(*) FILTER (WHERE a.status_code BETWEEN 200 AND 299),
               COALESCE(sum(a.duration_ms), 0), COALESCE(max(a.duration_ms), 0)
          FROM webhooks.attempts a
         WHERE a.endpoint_id IS NOT NULL AND a.started_at > now() - interval '8 days'
         GROUP BY 1, 2, 3;
    END IF;
END
$$;

-- A percentile (0..1) from histogram rows (bucket, attempts, largest
-- value), interpolated inside the bucket where it falls, between the
-- bucket's lower bound and the largest value seen in it.
CREATE OR REPLACE FUNCTION webhooks.latency_percentile(buckets smallint[], counts bigint[], maxes double precision[],
                                                       p double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    WITH g AS (
        SELECT u.b, pg_catalog.sum(u.n)::double precision AS n, pg_catalog.max(u.mx) AS mx
          FROM ROWS FROM (pg_catalog.unnest(buckets), pg_catalog.unnest(counts), pg_catalog.unnest(maxes)) AS u(b, n, mx)
         GROUP BY u.b
    ), c AS (
        SELECT g.b, g.n, g.mx,
               pg_catalog.sum(g.n) OVER (ORDER BY g.b) AS cum,
               (pg_catalog.sum(g.n) OVER ()) OPERATOR(pg_catalog.*) p AS target
          FROM g
    )
    SELECT l.lo OPERATOR(pg_catalog.+)
           (GREATEST(c.mx OPERATOR(pg_catalog.-) l.lo, 0::double precision)
            OPERATOR(pg_catalog.*)
            ((c.target OPERATOR(pg_catalog.-) (c.cum OPERATOR(pg_catalog.-) c.n)) OPERATOR(pg_catalog./) c.n))
      FROM c, LATERAL (SELECT CASE WHEN c.b OPERATOR(pg_catalog.=) 0 THEN 0::double precision
                                   ELSE LEAST((webhooks.latency_bounds())[c.b], c.mx) END AS lo) l
     WHERE (c.n OPERATOR(pg_catalog.>) 0::double precision) AND (c.cum OPERATOR(pg_catalog.>=) c.target)
     ORDER BY c.b
     LIMIT 1
$$;

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
      -- The last hour, to the minute, from the rollup (V16).
      LEFT JOIN LATERAL (
          SELECT COALESCE(sum(m.attempts), 0) AS attempts,
                 COALESCE(sum(m.succeeded), 0) AS succeeded,
                 sum(m.sum_ms) / nullif(sum(m.attempts), 0) AS avg_ms,
                 webhooks.latency_percentile(array_agg(m.bucket), array_agg(m.attempts::bigint), array_agg(m.max_ms), 0.95) AS p95_ms
            FROM webhooks.attempt_minutes m
           WHERE m.endpoint_id = ep.id AND m.minute >= date_trunc('minute', now() - interval '1 hour')) h ON true
      LEFT JOIN LATERAL (
          SELECT a.started_at, a.status_code, a.error, a.response_excerpt
            FROM webhooks.attempts a
           WHERE a.endpoint_id = ep.id AND a.started_at > now() - interval '7 days'
             AND (a.status_code IS NULL OR a.status_code NOT BETWEEN 200 AND 299)
           ORDER BY a.started_at DESC
           LIMIT 1) f ON true;
