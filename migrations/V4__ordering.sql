-- V4: per-aggregate ordering, opt-in per endpoint.
--
-- Why: some receivers need a row's events in order (created before
-- updated before deleted). For an endpoint with `ordered`, each delivery
-- row carries its row's identity (aggregate = source table + row key) and
-- its event's position (txid, seq); the claim then only takes the oldest
-- undelivered delivery of each aggregate, and never while another of the
-- same aggregate is in flight. Other endpoints pay nothing for it.

ALTER TABLE webhooks.endpoints ADD COLUMN ordered boolean NOT NULL DEFAULT false;
ALTER TABLE webhooks.deliveries ADD COLUMN aggregate text;
ALTER TABLE webhooks.deliveries ADD COLUMN event_txid xid8;
ALTER TABLE webhooks.deliveries ADD COLUMN event_seq bigint;
CREATE INDEX deliveries_aggregate_idx ON webhooks.deliveries (endpoint_id, aggregate, event_txid, event_seq)
    WHERE aggregate IS NOT NULL AND status IN ('pending', 'delivering');
