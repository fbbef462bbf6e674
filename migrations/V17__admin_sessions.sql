-- V17: console sessions that end (security audit 2, L4).
--
-- Why: a console session was only a signed cookie, so signing out cleared
-- the browser's copy and nothing else: a copied cookie worked until its
-- expiry. Now each sign-in is a row here, every console request checks it
-- (and notes when the session was last used, for the idle timeout), and
-- signing out deletes it. In Postgres, not in a replica's memory, so every
-- replica behind one Service agrees at once.
--
-- Only a SHA-256 of the session id is kept: whoever reads this table (a
-- backup, a DBA) cannot turn a row into a cookie. A small table: rows past
-- either timeout are deleted at each sign-in.
CREATE TABLE webhooks.admin_sessions (
    id_hash    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Last request with this session (the idle timeout counts from it).
    seen_at    timestamptz NOT NULL DEFAULT now(),
    -- The absolute end, whatever its use.
    expires_at timestamptz NOT NULL,
    -- The address that signed in (shown when sessions are listed).
    client     text,
    CONSTRAINT admin_sessions_pkey PRIMARY KEY (id_hash),
    CONSTRAINT admin_sessions_id_hash_check CHECK (length(id_hash) = 32)
);
