-- oauthd schema, version 7: the outbox of events for notification targets, and what a
-- connection's run of failed refreshes needs to be told once.
-- One row per event and target. An event is written in the same transaction as the change
-- it tells of; the delivery worker claims due rows (next_attempt_at moves to the end of
-- the claim, attempts counts the claim), sends them and records how that ended.
CREATE TABLE deliveries (
    id              TEXT PRIMARY KEY,
    event_id        TEXT NOT NULL,       -- webhook-id: the same for every target and retry
    event_type      TEXT NOT NULL,
    target          TEXT NOT NULL,
    body            TEXT NOT NULL,       -- the event as JSON; never a token
    created_at      INTEGER NOT NULL,
    deadline        INTEGER NOT NULL,    -- retried until then, then dead
    status          TEXT NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,             -- pending: due then (or the claim's end)
    claimed_until   INTEGER,             -- set while an attempt runs: the claim's end
    last_attempt_at INTEGER,
    last_error      TEXT,
    finished_at     INTEGER
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_created ON deliveries (created_at);

-- Since when refreshes have failed without a success in between, and whether
-- connection.refresh_failing was sent for that run.
ALTER TABLE connections ADD COLUMN failing_since INTEGER;
ALTER TABLE connections ADD COLUMN failing_notified INTEGER NOT NULL DEFAULT 0;
