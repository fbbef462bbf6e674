-- V6: inbound hardening.
--
-- Why: an empty or short route secret let anyone in (audit H2, L3): a route
-- secret must now be NULL (use PGWEBHOOKS_INBOUND_SECRET) or at least 16
-- printable characters without spaces. Existing routes with a weaker secret
-- are disabled here, and their secret cleared so the constraint holds: they
-- are NOT switched to the global secret (a disabled route is not served),
-- and stay off until an operator sets a proper secret with
-- webhooks.inbound_route_set, which enables the route again.
-- And a callback whose idempotency key matches one already applied but
-- whose body differs is answered 409 instead of a silent duplicate
-- (audit M5): each record keeps the SHA-256 of its payload. Records from
-- before this migration have none and are treated as duplicates, as before.

UPDATE webhooks.inbound_routes
   SET enabled = false, secret = NULL,
       description = concat_ws(' ', description,
                                '[disabled by migration V6: its secret was shorter than 16 characters; set a new one]')
 WHERE secret IS NOT NULL AND secret !~ '^[!-~]{16,}$';

ALTER TABLE webhooks.inbound_routes
    ADD CONSTRAINT inbound_routes_secret_check CHECK (secret IS NULL OR secret ~ '^[!-~]{16,}$');

ALTER TABLE webhooks.inbound ADD COLUMN payload_sha256 bytea;
