-- V7: deliveries belong to their endpoint, attempts to their delivery.
--
-- Why: webhooks.deliveries.endpoint_id had no foreign key. Deleting an
-- endpoint left its pending, failed and dead deliveries behind: never
-- claimed again (no endpoint to claim them for), counted by `status` as
-- backlog and dead letters, and pinning their events against retention
-- forever. webhooks.attempts.delivery_id had none either, so attempt rows
-- could outlive their delivery.
--
-- Now deleting an endpoint deletes its deliveries, and deleting a delivery
-- its attempts (ON DELETE CASCADE). Orphans left by earlier deletes are
-- removed first, or the constraints could not be added. Deleting an
-- endpoint scans webhooks.deliveries (no index covers every status of one
-- endpoint); that is rare, and an index would cost every insert.

DELETE FROM webhooks.deliveries d
 WHERE NOT EXISTS (SELECT 1 FROM webhooks.endpoints ep WHERE ep.id = d.endpoint_id);
DELETE FROM webhooks.attempts a
 WHERE NOT EXISTS (SELECT 1 FROM webhooks.deliveries d WHERE d.id = a.delivery_id);

ALTER TABLE webhooks.deliveries
    ADD CONSTRAINT deliveries_endpoint_id_fkey FOREIGN KEY (endpoint_id)
        REFERENCES webhooks.endpoints (id) ON DELETE CASCADE;
ALTER TABLE webhooks.attempts
    ADD CONSTRAINT attempts_delivery_id_fkey FOREIGN KEY (delivery_id)
        REFERENCES webhooks.deliveries (id) ON DELETE CASCADE;
