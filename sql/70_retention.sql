-- Retention: delivered history removed once it is old enough.

-- Retention: remove delivered history older than `keep`, and failed and
-- dead deliveries given up more than `keep_failed` ago (NULL: they stay
-- until handled), at most `batch` rows per table per call (call it again
-- while it returns > 0). Never removes an event that is not yet handed
-- out, or that still has a delivery left.
-- (keep_failed came later: the older three-argument form is replaced,
-- and its callers' calls resolve to this one.)
DROP FUNCTION IF EXISTS webhooks.retention_run(interval, integer, timestamptz);
CREATE OR REPLACE FUNCTION webhooks.retention_run(keep interval, batch integer DEFAULT 1000,
                                                  now timestamptz DEFAULT clock_timestamp(),
                                                  keep_failed interval DEFAULT NULL)
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

    IF keep_failed IS NOT NULL THEN
        WITH old AS (
            SELECT d.id FROM webhooks.deliveries d
             WHERE d.status IN ('failed', 'dead') AND d.updated_at < now - keep_failed
             LIMIT batch FOR UPDATE SKIP LOCKED
        ), a AS (
            DELETE FROM webhooks.attempts x USING old WHERE x.delivery_id = old.id RETURNING 1
        ), d AS (
            DELETE FROM webhooks.deliveries x USING old WHERE x.id = old.id RETURNING 1
        )
        SELECT attempts + (SELECT count(*) FROM a), deliveries + (SELECT count(*) FROM d)
          INTO attempts, deliveries;
    END IF;

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

    -- The per-minute rollup (V16) serves charts of up to 7 days.
    DELETE FROM webhooks.attempt_minutes m
     WHERE m.minute < now - interval '8 days'
       AND m.ctid = ANY (ARRAY(SELECT x.ctid FROM webhooks.attempt_minutes x
                                WHERE x.minute < now - interval '8 days' LIMIT batch));
    RETURN NEXT;
END
$$;
