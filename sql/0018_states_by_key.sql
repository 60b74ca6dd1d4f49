-- oauthd schema, version 18: each state names the API key that created it (`created_by`,
-- the key's id; NULL for oauthd's own states, and for states created before this version,
-- which no key's count holds). The writer keeps each key's live states in namespace_counts
-- as the row '*key:<id>' (no namespace can be named so: a namespace starts with a letter or
-- digit), so that states.max_states_per_key is one lookup per group commit, as the caps of
-- a namespace and of the store are (src/store/sqlite/live_counts.rs).
ALTER TABLE states ADD COLUMN created_by TEXT;
-- A key's states by expiry: what an insert at the key's cap sets aside when they expired,
-- and what each start counts the keys' rows afresh from (an index-only count).
CREATE INDEX states_created_by ON states (created_by, expires_at) WHERE created_by IS NOT NULL;
