-- oauthd schema, version 9: two rows of namespace_counts that no namespace can be named (a
-- namespace starts with a letter or digit): '*states', the live states of all namespaces
-- together (what states.max_total_states is checked against), and '*tombstones', the
-- tombstones kept for expired states (bounded by the same setting). The writer keeps
-- both in the same transaction as each change (src/store/sqlite/live_counts.rs); they
-- share the page the namespaces' counts are on, so a group commit writes no more pages.
DELETE FROM namespace_counts WHERE namespace IN ('*states', '*tombstones');
INSERT INTO namespace_counts (namespace, live) SELECT '*states', count(*) FROM states;
INSERT INTO namespace_counts (namespace, live)
    SELECT '*tombstones', count(*) FROM expired_states;
