-- oauthd schema, version 6: states for more than OAuth flows (sessions, 2FA challenges,
-- reset links, an app's own authorization codes and tokens), and per-tenant API keys.
-- A state's public identifier is derived from key_hash (see StateId in src/secret.rs), so it
-- needs no column and no index of its own.
-- Whom the state belongs to (a user or a tenant), for "list" and "sign out everywhere".
ALTER TABLE states ADD COLUMN subject        TEXT;
-- HMAC-SHA256 of a code the user types, keyed with the state value itself (which is never
-- stored), so this column cannot be brute-forced without the state.
ALTER TABLE states ADD COLUMN secret_hash    BLOB;
ALTER TABLE states ADD COLUMN attempts_left  INTEGER;
-- Sliding states: each touch moves expires_at to now + sliding_ttl, never past
-- max_expires_at.
ALTER TABLE states ADD COLUMN sliding_ttl    INTEGER;
ALTER TABLE states ADD COLUMN max_expires_at INTEGER;

-- Only states with a subject are in this index: plain OAuth states cost nothing more.
CREATE INDEX states_subject ON states (namespace, subject, created_at)
    WHERE subject IS NOT NULL;

-- API keys limited to connection accounts (JSON array of patterns; NULL = every account),
-- so one tenant's key cannot read another tenant's tokens.
ALTER TABLE api_keys ADD COLUMN accounts TEXT;
