-- oauthd schema, version 5.
-- Which provider account a connection is: the ID token's `sub` (and `email`, `name` when
-- present), recorded when the provider answers a code exchange with a verified ID token.
ALTER TABLE connections ADD COLUMN account_sub   TEXT;
ALTER TABLE connections ADD COLUMN account_email TEXT;
ALTER TABLE connections ADD COLUMN account_name  TEXT;
-- When the tokens came from a (re)connect, so that "last refresh" can say "never" until a
-- refresh happens.
ALTER TABLE connections ADD COLUMN connected_at  INTEGER;

-- Who started a device flow ("key:<id>" for an API key, "admin" for the page, "cli" for
-- the terminal), so that pending flows can be bounded per starter
-- (limits.max_device_flows_per_key).
ALTER TABLE device_flows ADD COLUMN started_by TEXT NOT NULL DEFAULT '';
CREATE INDEX device_flows_started_by ON device_flows (started_by, status);
