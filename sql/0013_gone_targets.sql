-- oauthd schema, version 13: notification targets that answered 410 Gone. Deliveries to
-- such a target end without being sent while its URL is the one that answered (url_hash:
-- SHA-256 of the URL, which may hold a token and is not stored), except test events and
-- a delivery retried by hand; a 2xx from the target removes its row.
CREATE TABLE gone_targets (
    target   TEXT PRIMARY KEY,
    url_hash TEXT NOT NULL,
    since    INTEGER NOT NULL
) WITHOUT ROWID;
