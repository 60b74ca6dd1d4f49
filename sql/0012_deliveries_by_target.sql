-- oauthd schema, version 12: each target's newest deliveries, found without reading the
-- other targets' (the page's last delivery and last failure of a target that has had
-- none for a while, `oauthd events list --target`).
CREATE INDEX deliveries_by_target ON deliveries (target, created_at, id);
