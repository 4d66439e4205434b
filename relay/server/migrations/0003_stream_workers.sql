-- The receiver worker of a live stream, so a restarted relay can re-adopt it
-- (or stop it cleanly and reclaim its ports).
ALTER TABLE streams ADD COLUMN ports TEXT;
ALTER TABLE streams ADD COLUMN worker_pid BIGINT;
ALTER TABLE streams ADD COLUMN worker_dir TEXT;
