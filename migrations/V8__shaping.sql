-- V8: endpoints shape what their receiver gets, and may filter by content.
--
-- Why: every receiver so far got one fixed envelope and fixed header names,
-- so an app whose Make scenarios already read its own body
-- ({"event": ..., "task": {...}}) or check its own signature header
-- (X-Make-Signature) could not adopt pgwebhooks without rebuilding them.
--
-- - body_template: the body as a JSON template with {{path}} placeholders
--   (src/deliver/template.rs); NULL sends the standard envelope.
-- - signature_header, secret_header: the names of the sha256-hex and
--   secret-header styles' headers; NULL keeps x-webhook-signature and
--   x-webhook-secret.
-- - filter: a SQL/JSON path predicate over the envelope; events it rejects
--   (webhooks.filter_accepts, sql/20_delivery.sql) get no delivery to the
--   endpoint. NULL delivers everything the endpoint's patterns match, at
--   no extra cost.
--
-- All NULL by default: existing endpoints behave exactly as before. The
-- templates and header names are checked by `endpoint add|update` and
-- again when the sidecar loads endpoints (a bad row is skipped, logged);
-- the jsonpath type itself refuses a filter that does not parse.

ALTER TABLE webhooks.endpoints
    ADD COLUMN body_template    jsonb,
    ADD COLUMN signature_header text,
    ADD COLUMN secret_header    text,
    ADD COLUMN filter           jsonpath;
