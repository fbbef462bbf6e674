-- V13: an attempt belongs to its endpoint by foreign key, not to its delivery.
--
-- Why: with webhooks.attempts.delivery_id referencing webhooks.deliveries,
-- every recorded attempt ran PostgreSQL's referential check, a
-- `SELECT ... FROM deliveries WHERE id = $1 FOR KEY SHARE` planned once per
-- connection and kept. A sidecar that started while deliveries was small
-- (a fresh install, a table just truncated or analysed empty) kept a
-- sequential-scan plan for that check, so each attempt read the whole,
-- growing table: in the benchmark a drain of 100,000 events fell from
-- ~25,000/s to ~3,000/s (0.37 ms of Postgres CPU per attempt, the record's
-- flushes taking seconds), until an autoanalyze happened to replan it.
-- Attempts are only ever written together with, or after, their delivery
-- (webhooks.delivery_insert and webhooks.delivery_record insert both in one
-- statement), and retention deletes both explicitly, so the check bought
-- nothing the writers do not already guarantee.
--
-- What still holds: deleting an endpoint deletes its deliveries and their
-- attempts (attempts.endpoint_id now references endpoints ON DELETE
-- CASCADE; that check reads the endpoints table, a handful of rows).

-- Attempts written before attempts.endpoint_id existed get it from their
-- delivery; none can lack a delivery while the old constraint holds.
UPDATE webhooks.attempts a SET endpoint_id = d.endpoint_id
  FROM webhooks.deliveries d
 WHERE a.endpoint_id IS NULL AND d.id = a.delivery_id;
DELETE FROM webhooks.attempts a WHERE a.endpoint_id IS NULL;

ALTER TABLE webhooks.attempts DROP CONSTRAINT attempts_delivery_id_fkey;
ALTER TABLE webhooks.attempts ALTER COLUMN endpoint_id SET NOT NULL;
ALTER TABLE webhooks.attempts
    ADD CONSTRAINT attempts_endpoint_id_fkey FOREIGN KEY (endpoint_id)
        REFERENCES webhooks.endpoints (id) ON DELETE CASCADE;
