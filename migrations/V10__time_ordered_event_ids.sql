-- V10: time-ordered event ids.
--
-- Why: webhooks.events.event_id defaulted to gen_random_uuid(), so every
-- captured row inserted its primary-key entry at a random place in the
-- index: a random leaf page touched (and split) per event, the index
-- spread over twice the pages it needs, and, under concurrent writers, more
-- CPU per event than any other part of capture (docs/performance.md,
-- "Capture: what each lever is worth"). New ids are UUIDv7 (RFC 9562): the
-- first 48 bits are the insert's Unix time in milliseconds and 74 bits are
-- random, so new entries land at the right edge of the index like a
-- sequence's, and ids stay globally unique (the webhook-id a receiver
-- deduplicates on must not repeat across databases).
--
-- Existing events keep their ids (a pending event is delivered with the
-- webhook-id it was given, and a receiver that stored one still finds it);
-- only the default changes, so nothing is rewritten or locked for long.
-- The expression is built from built-in functions only (PostgreSQL 15 has
-- no uuidv7()), every name qualified: a default is stored resolved, so no
-- search_path can change it.
ALTER TABLE webhooks.events ALTER COLUMN event_id SET DEFAULT
    pg_catalog.encode(
        pg_catalog.set_bit(pg_catalog.set_bit(
            overlay(pg_catalog.uuid_send(pg_catalog.gen_random_uuid())
                    placing substring(pg_catalog.int8send(
                        (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000)::pg_catalog.int8) from 3)
                    from 1 for 6),
            52, 1), 53, 1),
        'hex')::pg_catalog.uuid;
