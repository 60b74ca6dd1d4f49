-- oauthd schema, version 4: live states per namespace, kept by triggers, so that a cap per
-- namespace costs one primary-key lookup per create instead of a count over the table.
CREATE TABLE namespace_counts (
    namespace TEXT    PRIMARY KEY,
    live      INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO namespace_counts (namespace, live)
    SELECT namespace, count(*) FROM states GROUP BY namespace;

CREATE TRIGGER states_count_insert AFTER INSERT ON states BEGIN
    INSERT INTO namespace_counts (namespace, live) VALUES (NEW.namespace, 1)
        ON CONFLICT (namespace) DO UPDATE SET live = live + 1;
END;

CREATE TRIGGER states_count_delete AFTER DELETE ON states BEGIN
    UPDATE namespace_counts SET live = live - 1 WHERE namespace = OLD.namespace;
END;
