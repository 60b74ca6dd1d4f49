-- oauthd schema, version 8: the live states per namespace (namespace_counts, version 4) are
-- kept by the writer, once per group commit, instead of by a trigger on every insert and
-- delete of a state (src/store/sqlite/live_counts.rs). The counts are exact at this point:
-- the triggers kept them until now.
DROP TRIGGER IF EXISTS states_count_insert;
DROP TRIGGER IF EXISTS states_count_delete;
