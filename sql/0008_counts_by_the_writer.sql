-- oauthd schema, version 8: the live states per namespace (namespace_counts, version 4) are
-- kept by the writer, once per group commit, instead of by a trigger on every insert and
-- delete of a state (src/store/sqlite/live_counts.rs). They are counted afresh here, so that
-- whatever the triggers missed (rows changed with the triggers dropped by hand) starts over.
DROP TRIGGER IF EXISTS states_count_insert;
DROP TRIGGER IF EXISTS states_count_delete;
DELETE FROM namespace_counts;
INSERT INTO namespace_counts (namespace, live)
    SELECT namespace, count(*) FROM states GROUP BY namespace;
