-- oauthd schema, version 11: a delivery retried by hand backs off from its first wait
-- again. attempts keeps counting every attempt (finishing one needs its number, so that
-- a worker whose claim ran out cannot record over a newer attempt); this column holds how
-- many there were when the delivery was last retried by hand, and the wait before the
-- next attempt doubles with the attempts made since.
ALTER TABLE deliveries ADD COLUMN attempts_before_retry INTEGER NOT NULL DEFAULT 0;
