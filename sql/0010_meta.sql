-- oauthd schema, version 10: facts about the database itself, by name.
-- 'served_at': when `oauthd serve` first ran on this database (unix ms). A terminal command
-- that finds no vault key file beside a database that was served does not make one: the
-- daemon's key is elsewhere (OAUTHD_KEY_FILE, OAUTHD_KEY), and what the command sealed
-- under a key of its own would not open in the daemon.
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
