-- oauthd schema, version 16: when each API key was last used (unix ms), for `oauthd keys
-- list`. Written at most once a minute per key and process, off the request's path; NULL
-- for a key not used since this version.
ALTER TABLE api_keys ADD COLUMN last_used_at INTEGER;
