-- V5: capture without generated code.
--
-- Why: earlier versions generated a SECURITY DEFINER function per watched
-- table from its name and options, owned by whoever ran watch() (usually a
-- superuser). A table's owner could choose a name that became code in that
-- function, or define a cast to json that the function ran with the
-- definer's rights: either way the owner became superuser (security audit
-- C1, C2). Capture is now one function, webhooks.capture(), owned by a role
-- that can only insert events, with each table's options as its trigger's
-- arguments; webhooks.watched becomes a view over those triggers.
--
-- This step keeps the old options aside (watched_v4); `migrate` then applies
-- sql/10_capture.sql, which re-watches every table listed there with the new
-- function, drops the generated functions, and drops watched_v4. Events
-- already in the outbox are untouched.

-- The old event triggers read webhooks.watched: they go first (they were
-- created by a superuser, and only exist where migrate ran as one).
DROP EVENT TRIGGER IF EXISTS webhooks_alter_table;
DROP EVENT TRIGGER IF EXISTS webhooks_drop_table;
ALTER TABLE webhooks.watched RENAME TO watched_v4;
ALTER TABLE webhooks.watched_v4 RENAME CONSTRAINT watched_pkey TO watched_v4_pkey;
