-- V9: operational events.
--
-- Why: when an endpoint is paused, resumed, or its circuit opens or closes,
-- pgwebhooks emits an event of its own (webhooks.endpoint.*) so a receiver
-- (an ops channel, a Make scenario) hears of it; dead letters are told as
-- webhooks.delivery.dead, at most once per endpoint per minute with a
-- count. This table keeps that minute per endpoint: when the last such event
-- went out and how many dead letters have come since.
CREATE TABLE webhooks.dead_notices (
    endpoint_id       bigint      NOT NULL,
    last_emitted_at   timestamptz,
    pending           integer     NOT NULL DEFAULT 0,
    first_delivery_id bigint,
    first_event_id    uuid,
    CONSTRAINT dead_notices_pkey PRIMARY KEY (endpoint_id),
    CONSTRAINT dead_notices_endpoint_id_fkey FOREIGN KEY (endpoint_id)
        REFERENCES webhooks.endpoints (id) ON DELETE CASCADE
);
