-- oauthd schema, version 2: the broker's connections and the admin's browser sessions.

-- One connected account at one provider. Tokens are sealed by the vault (AES-256-GCM,
-- AAD "connection:<provider>/<account>:<field>"): never plaintext.
CREATE TABLE connections (
    provider          TEXT    NOT NULL,
    account           TEXT    NOT NULL,
    status            TEXT    NOT NULL,          -- active | needs_reauth
    scopes            TEXT,                      -- space-separated, as granted
    token_type        TEXT    NOT NULL,
    access_token      BLOB    NOT NULL,          -- sealed
    refresh_token     BLOB,                      -- sealed; NULL when the provider gave none
    access_expires_at INTEGER,                   -- unix ms; NULL when the provider did not say
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    last_refresh_at   INTEGER,
    last_error        TEXT,
    failures          INTEGER NOT NULL DEFAULT 0, -- failed refreshes in a row
    retry_at          INTEGER,                   -- no refresh attempt before this (backoff)
    lease_until       INTEGER,                   -- a refresh is under way until this time
    generation        INTEGER NOT NULL DEFAULT 0, -- fencing: bumped by every lease and reconnect
    PRIMARY KEY (provider, account)
) WITHOUT ROWID;

-- One-time admin login links and browser sessions; only hashes are stored.
CREATE TABLE admin_secrets (
    secret_hash BLOB    PRIMARY KEY,
    kind        TEXT    NOT NULL,                -- login_link | session
    expires_at  INTEGER NOT NULL
) WITHOUT ROWID;
