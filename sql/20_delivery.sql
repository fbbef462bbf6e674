-- Delivery: the statements the sidecar runs, as functions (SQL is the API).
--
-- Names are noun_verb. Every function that changes a delivery checks that
-- the caller still holds its lease, and takes `now` as a parameter so tests
-- can move time. Two paths:
--   first attempts: batch_claim -> (HTTP) -> delivery_insert + batch_complete
--   retries:        delivery_claim -> (HTTP) -> delivery_record
-- No function here is ever called with a transaction open across HTTP.
--
-- The sidecar's bookkeeping (claims, outcomes) commits asynchronously:
-- batch_claim, batch_rescue, batch_complete, delivery_insert, delivery_claim
-- and delivery_record set synchronous_commit = off for their transaction
-- (set_config(..., true), so only that transaction). A commit is visible to
-- every session at once either way; what changes is that it does not wait
-- for its WAL flush, so it no longer competes with the app's commits for
-- the disk. A Postgres crash can lose the last moments of bookkeeping
-- (at most 3 x wal_writer_delay), always as a consistent prefix; the effect
-- is a delivery made again with the same webhook-id, never a lost event:
-- events are committed by the app's own transaction, and inbound callbacks
-- (inbound_apply) commit synchronously before they are answered.

-- Subscriptions changed: bump the version (transactionally) and tell the
-- replicas to reload.
CREATE OR REPLACE FUNCTION webhooks.config_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE webhooks.config_version SET version = version + 1;
    PERFORM pg_notify('webhooks', 'config');
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS config_changed ON webhooks.endpoints;
CREATE TRIGGER config_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON webhooks.endpoints
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks.config_changed();
DROP TRIGGER IF EXISTS config_changed ON webhooks.endpoint_secrets;
CREATE TRIGGER config_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON webhooks.endpoint_secrets
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks.config_changed();

-- The envelope an endpoint's content filter reads: the standard body's
-- fields (timestamp as the body writes it, RFC 3339 UTC with milliseconds).
-- (No SET clause, every name qualified: so that Postgres inlines it, and
-- filter_accepts below, into the fan-out's statement instead of calling
-- them per event; with a SET clause each call saved and restored the
-- search path.)
CREATE OR REPLACE FUNCTION webhooks.event_envelope(e webhooks.events) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT pg_catalog.jsonb_build_object('id', e.event_id, 'type', e.event_type,
               'timestamp', pg_catalog.to_char(pg_catalog.timezone('UTC', e.occurred_at), 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
               'tenant_id', e.tenant_id, 'data', e.payload, 'previous', e.previous)
$$;

-- Does an endpoint's content filter (a jsonb_path_match predicate; NULL:
-- none) accept the event? A predicate that fails at run time (a type
-- mismatch, a non-boolean result) does not match: silent => true, so a bad
-- filter never stalls fan-out. Used by the sidecar's fan-out (only for
-- endpoints that have a filter) and by replay.
CREATE OR REPLACE FUNCTION webhooks.filter_accepts(filter jsonpath, e webhooks.events) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT filter IS NULL OR coalesce(pg_catalog.jsonb_path_match(webhooks.event_envelope(e), filter, '{}'::pg_catalog.jsonb, true), false)
$$;

-- Claim the next range of committed events for fan-out and first delivery.
-- Eligible: past the cursor and written by a transaction older than every
-- running one (txid < snapshot xmin), so no later commit can land behind the
-- cursor. The cursor row lock serialises replicas for the few milliseconds
-- this takes; the range is leased as a row of webhooks.fanout_batches.
CREATE OR REPLACE FUNCTION webhooks.batch_claim(
    replica    text,
    max_events integer,
    lease      interval,
    now        timestamptz DEFAULT clock_timestamp()
) RETURNS TABLE (
    batch_id       bigint,
    event_id       uuid,
    event_type     text,
    tenant_id      text,
    origin         text,
    occurred_at    timestamptz,
    payload        text,
    previous       text,
    config_version bigint
)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cur_txid  xid8;
    cur_seq   bigint;
    horizon   xid8;
    last_txid xid8;
    last_seq  bigint;
    bid       bigint;
    ver       bigint;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);  -- bookkeeping: see the note at the top
    SELECT c.txid, c.seq INTO cur_txid, cur_seq FROM webhooks.fanout_cursor c FOR UPDATE;
    horizon := pg_snapshot_xmin(pg_current_snapshot());
    SELECT p.txid, p.seq INTO last_txid, last_seq
      FROM (SELECT e.txid, e.seq FROM webhooks.events e
             WHERE (e.txid, e.seq) > (cur_txid, cur_seq) AND e.txid < horizon
             ORDER BY e.txid, e.seq LIMIT max_events) p
     ORDER BY p.txid DESC, p.seq DESC LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE webhooks.fanout_cursor SET txid = last_txid, seq = last_seq;
    INSERT INTO webhooks.fanout_batches (from_txid, from_seq, to_txid, to_seq, claimed_by, lease_until, created_at)
    VALUES (cur_txid, cur_seq, last_txid, last_seq, replica, now + lease, now)
    RETURNING id INTO bid;
    SELECT v.version INTO ver FROM webhooks.config_version v;
    RETURN QUERY
        SELECT bid, e.event_id, e.event_type, e.tenant_id, e.origin, e.occurred_at,
               e.payload::text, e.previous::text, ver
          FROM webhooks.events e
         WHERE (e.txid, e.seq) > (cur_txid, cur_seq) AND (e.txid, e.seq) <= (last_txid, last_seq)
         ORDER BY e.txid, e.seq;
END
$$;

-- Take over one batch whose lease expired (its replica died or stalled).
-- done_endpoints lists endpoints that already have a delivery row for the
-- event, so only what was not recorded is sent again.
CREATE OR REPLACE FUNCTION webhooks.batch_rescue(
    replica text,
    lease   interval,
    now     timestamptz DEFAULT clock_timestamp()
) RETURNS TABLE (
    batch_id       bigint,
    event_id       uuid,
    event_type     text,
    tenant_id      text,
    origin         text,
    occurred_at    timestamptz,
    payload        text,
    previous       text,
    config_version bigint,
    done_endpoints bigint[]
)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    b   webhooks.fanout_batches;
    ver bigint;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);  -- bookkeeping: see the note at the top
    UPDATE webhooks.fanout_batches fb SET claimed_by = replica, lease_until = now + lease
     WHERE fb.id = (SELECT x.id FROM webhooks.fanout_batches x WHERE x.lease_until < now
                     ORDER BY x.id LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING fb.* INTO b;
    IF b.id IS NULL THEN
        RETURN;
    END IF;
    SELECT v.version INTO ver FROM webhooks.config_version v;
    RETURN QUERY
        SELECT b.id, e.event_id, e.event_type, e.tenant_id, e.origin, e.occurred_at,
               e.payload::text, e.previous::text, ver,
               ARRAY(SELECT d.endpoint_id FROM webhooks.deliveries d WHERE d.event_id = e.event_id)
          FROM webhooks.events e
         WHERE (e.txid, e.seq) > (b.from_txid, b.from_seq) AND (e.txid, e.seq) <= (b.to_txid, b.to_seq)
         ORDER BY e.txid, e.seq;
END
$$;

-- A batch is done when every delivery in it is recorded. Only the lease
-- holder may delete it; returns how many were deleted.
CREATE OR REPLACE FUNCTION webhooks.batch_complete(replica text, ids bigint[]) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    n integer;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);  -- bookkeeping: see the note at the top
    WITH d AS (DELETE FROM webhooks.fanout_batches b
                WHERE b.id = ANY (ids) AND b.claimed_by = replica RETURNING 1)
    SELECT count(*)::integer INTO n FROM d;
    RETURN n;
END
$$;

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

-- A listener says whether it is idle (waiting on LISTEN). Writers NOTIFY
-- only while some listener is idle.
CREATE OR REPLACE FUNCTION webhooks.listener_set(replica text, idle boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    INSERT INTO webhooks.listeners AS l (replica, idle, updated_at) VALUES (replica, idle, now())
    ON CONFLICT ON CONSTRAINT listeners_pkey DO UPDATE SET idle = excluded.idle, updated_at = excluded.updated_at;
END
$$;

CREATE OR REPLACE FUNCTION webhooks.listener_forget(replica text) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM webhooks.listeners l WHERE l.replica = listener_forget.replica
$$;

-- Listener rows of replicas whose LISTEN connection is gone (killed
-- without a goodbye): an idle flag nobody honours would make every writer
-- NOTIFY for nothing.
CREATE OR REPLACE FUNCTION webhooks.listener_rescue() RETURNS integer
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    WITH d AS (
        DELETE FROM webhooks.listeners l
         WHERE l.updated_at < now() - interval '10 seconds'
           AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                            WHERE a.application_name = 'pgwebhooks listen ' || l.replica)
        RETURNING 1)
    SELECT count(*)::integer FROM d
$$;

-- After a listener marks itself idle: is there work it would miss, and has
-- every transaction that could have seen it busy ended? (horizon >= the
-- xmax taken right after the idle flag committed.)
-- Planned afresh at every call (force_custom_plan): the sidecar calls it at
-- every idle wait, and after five calls plpgsql may keep a generic plan,
-- which for "past the cursor" is a sequential scan of the whole outbox
-- (its cost then grows with the history; the cursor values make the custom
-- plan an index scan that finds nothing at once).
CREATE OR REPLACE FUNCTION webhooks.fanout_probe(
    OUT has_work boolean, OUT horizon bigint, OUT xmax bigint
)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    cur_txid xid8;
    cur_seq  bigint;
    snap     pg_snapshot := pg_current_snapshot();
BEGIN
    -- Constants, not a join: the comparison is then an index condition.
    SELECT c.txid, c.seq INTO cur_txid, cur_seq FROM webhooks.fanout_cursor c;
    has_work := EXISTS (SELECT 1 FROM webhooks.events e
                         WHERE (e.txid, e.seq) > (cur_txid, cur_seq) AND e.txid < pg_snapshot_xmin(snap));
    horizon := pg_snapshot_xmin(snap)::text::bigint;
    xmax := pg_snapshot_xmax(snap)::text::bigint;
END
$$;
