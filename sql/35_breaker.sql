-- The circuit breaker's SQL (src/breaker.rs holds the streaks): pausing
-- and resuming an endpoint, tripping its circuit, the probe delivery that
-- tests it, and closing it again.

CREATE OR REPLACE FUNCTION webhooks.endpoint_pause(id bigint, reason text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    was boolean;
BEGIN
    SELECT e.enabled INTO was FROM webhooks.endpoints e WHERE e.id = endpoint_pause.id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE webhooks.endpoints e SET enabled = false, disabled_reason = reason, updated_at = now()
     WHERE e.id = endpoint_pause.id;
    IF was THEN
        PERFORM webhooks.endpoint_event('webhooks.endpoint.paused', endpoint_pause.id,
                                        jsonb_build_object('reason', reason));
    END IF;
    RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION webhooks.endpoint_resume(id bigint) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    was boolean;
BEGIN
    SELECT e.enabled INTO was FROM webhooks.endpoints e WHERE e.id = endpoint_resume.id FOR UPDATE;
    UPDATE webhooks.endpoints e SET enabled = true, disabled_reason = NULL, breaker_opened_at = NULL, updated_at = now()
     WHERE e.id = endpoint_resume.id;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF NOT was THEN
        PERFORM webhooks.endpoint_event('webhooks.endpoint.resumed', endpoint_resume.id, '{}');
    END IF;
    -- Resumed: what waited out a backoff goes now.
    UPDATE webhooks.deliveries d SET next_attempt_at = now()
     WHERE d.endpoint_id = endpoint_resume.id AND d.status = 'pending' AND d.next_attempt_at > now();
    PERFORM pg_notify('webhooks', 'retry');
    RETURN true;
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
