-- V16: attempts rolled up per endpoint, minute and latency bucket, as they
-- are written.
--
-- Why: the console's front pages and webhooks.endpoint_health aggregated
-- the last hour of webhooks.attempts on every load; on a busy hour (250,000
-- attempts) that was 150-400 ms a page. The rollup is kept by a statement
-- trigger on webhooks.attempts (sql/50_status.sql), one grouped upsert per
-- recorder flush, so an hour is at most 60 x 11 small rows an endpoint.
-- Latency is kept as a histogram (bucket = width_bucket(duration_ms,
-- webhooks.latency_bounds()), with the sum and the largest value of each
-- bucket), from which percentiles are interpolated. The trigger and the
-- first fill from the existing attempts are in sql/50_status.sql: created
-- once, together, so no attempt is counted twice or missed.
CREATE TABLE webhooks.attempt_minutes (
    endpoint_id bigint           NOT NULL,
    minute      timestamptz      NOT NULL,
    bucket      smallint         NOT NULL,
    attempts    integer          NOT NULL,
    succeeded   integer          NOT NULL,
    sum_ms      double precision NOT NULL,
    max_ms      double precision NOT NULL,
    CONSTRAINT attempt_minutes_pkey PRIMARY KEY (endpoint_id, minute, bucket)
);
CREATE INDEX attempt_minutes_minute_idx ON webhooks.attempt_minutes (minute);
