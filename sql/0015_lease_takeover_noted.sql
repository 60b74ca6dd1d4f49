-- oauthd schema, version 15: a refresh lease that ran out without being let go is taken
-- over only a while after a process noted so, with a write (takeover_noted_at, unix ms):
-- a store that took that write takes the holder's too, which, if its process still runs,
-- is trying to save what its provider answered, and lands first. Cleared by the takeover.
ALTER TABLE connections ADD COLUMN takeover_noted_at INTEGER;
