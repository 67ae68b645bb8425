ALTER TABLE instances DROP COLUMN IF EXISTS restore_snapshot, DROP COLUMN IF EXISTS restore_count;
DROP TABLE IF EXISTS instance_snapshots;
