-- oauthd schema, version 17: why a device flow ended without connecting, as a stable code
-- apps read (`error`: access_denied, expired_token, too_many_connections, ...); NULL while
-- it is pending, once it connected, and for flows that ended before this version.
ALTER TABLE device_flows ADD COLUMN error TEXT;
