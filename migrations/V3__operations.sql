-- V3: what operators need over months.
--
-- Why: the views and functions of sql/40_operations.sql answer "what is
-- stuck, what failed, is this endpoint healthy" without scanning history;
-- attempts now say which endpoint they were for (health per endpoint
-- without a join through deliveries), time-ordered BRIN indexes serve
-- retention and "recent" queries, and the circuit breaker records when it
-- paused an endpoint so it resumes only what it paused itself.

ALTER TABLE webhooks.attempts ADD COLUMN endpoint_id bigint;
CREATE INDEX attempts_started_brin ON webhooks.attempts USING brin (started_at);
CREATE INDEX attempts_endpoint_idx ON webhooks.attempts (endpoint_id, started_at);

-- Dead letters and failures, until someone handles them.
CREATE INDEX deliveries_dead_idx ON webhooks.deliveries (updated_at) WHERE status IN ('failed', 'dead');
-- Delivered rows, oldest first, for retention.
CREATE INDEX deliveries_updated_brin ON webhooks.deliveries USING brin (updated_at);

ALTER TABLE webhooks.endpoints ADD COLUMN breaker_opened_at timestamptz;

-- A queue churns: vacuum the hot tables early and often, in small steps.
ALTER TABLE webhooks.deliveries SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02,
                                     autovacuum_vacuum_cost_delay = 1, fillfactor = 90);
ALTER TABLE webhooks.events SET (autovacuum_vacuum_insert_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.05);
ALTER TABLE webhooks.attempts SET (autovacuum_vacuum_insert_scale_factor = 0.05);
ALTER TABLE webhooks.fanout_batches SET (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 200);
ALTER TABLE webhooks.fanout_cursor SET (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 500);
