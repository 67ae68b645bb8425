ALTER TABLE nodes DROP COLUMN IF EXISTS cgroup_driver, DROP COLUMN IF EXISTS cgroup_version;
