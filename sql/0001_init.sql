-- oauthd schema, version 1.
-- Applied once, in order with the other numbered files; PRAGMA user_version records
-- the last file applied.

-- Live OAuth states (and states of any other namespace an app keeps here).
-- Only the SHA-256 of the state value is stored: a copy of this file reveals no usable state.
CREATE TABLE states (
    key_hash   BLOB    PRIMARY KEY,          -- SHA-256 of the 43-char state value
    namespace  TEXT    NOT NULL,
    data       TEXT,                          -- the app's JSON, or NULL
    created_at INTEGER NOT NULL,              -- unix ms
    expires_at INTEGER NOT NULL               -- unix ms; enforced on read
) WITHOUT ROWID;
CREATE INDEX states_expires_at ON states (expires_at);

-- What the sweeper leaves of an expired state during the grace window: the hash and
-- namespace only, never the data, so that a late consume can still answer 410 (expired)
-- instead of 404 (unknown).
CREATE TABLE expired_states (
    key_hash   BLOB    PRIMARY KEY,
    namespace  TEXT    NOT NULL,
    expired_at INTEGER NOT NULL               -- unix ms, the state's expires_at
) WITHOUT ROWID;
CREATE INDEX expired_states_expired_at ON expired_states (expired_at);

-- API keys for apps. Only the SHA-256 of the key is stored.
CREATE TABLE api_keys (
    id         TEXT    PRIMARY KEY,           -- uuid
    name       TEXT    NOT NULL,
    key_hash   BLOB    NOT NULL UNIQUE,
    namespaces TEXT,                          -- JSON array of allowed namespace patterns; NULL = all
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
-- A name is unique among keys that are not revoked; a revoked key's name can be reused.
CREATE UNIQUE INDEX api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL;
