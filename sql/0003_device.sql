-- oauthd schema, version 3: device authorization grants (RFC 8628) in progress.
-- A row lives until the provider's expires_in passes, then as long as the states' grace
-- window so the status endpoint can still answer; the sweeper deletes it after that.
CREATE TABLE device_flows (
    id                        TEXT    PRIMARY KEY,   -- uuid the app polls oauthd with
    provider                  TEXT    NOT NULL,
    account                   TEXT    NOT NULL,
    device_code               BLOB    NOT NULL,      -- sealed (AAD device:<id>)
    user_code                 TEXT    NOT NULL,
    verification_uri          TEXT    NOT NULL,
    verification_uri_complete TEXT,
    interval_ms               INTEGER NOT NULL,      -- grows by 5 s on every slow_down
    expires_at                INTEGER NOT NULL,
    status                    TEXT    NOT NULL,      -- pending | connected | denied | expired | failed
    detail                    TEXT,
    next_poll_at              INTEGER NOT NULL,
    lease_until               INTEGER,               -- a poll is in flight until then
    created_at                INTEGER NOT NULL,
    updated_at                INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX device_flows_status ON device_flows (status, next_poll_at);
CREATE INDEX device_flows_expires_at ON device_flows (expires_at);
