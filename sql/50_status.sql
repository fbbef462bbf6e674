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
