-- oauthd schema, version 14: each target's newest delivered and newest failed deliveries,
-- found without reading the rest of its deliveries (the page asks for both on every load:
-- a target that never failed would otherwise be read in full, up to keep_days of it).
-- The WHERE clauses are the ones the listing writes, word for word, so SQLite uses them.
CREATE INDEX deliveries_delivered_by_target ON deliveries (target, created_at, id)
    WHERE status = 'delivered';
CREATE INDEX deliveries_failed_by_target ON deliveries (target, created_at, id)
    WHERE status = 'dead' OR (status = 'pending' AND last_error IS NOT NULL);
