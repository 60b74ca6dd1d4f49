-- oauthd schema, version 19: a namespace's states by expiry. What an insert at the
-- namespace's cap sets aside when they expired, found at once (without it each create
-- refused at a full namespace read every expired state of every namespace not yet swept
-- while holding the writer), and what each start counts the namespaces' rows afresh from
-- (an index-only count), as 0018 does for the keys'.
CREATE INDEX states_namespace_expires ON states (namespace, expires_at);
