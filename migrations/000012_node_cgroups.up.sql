-- What each node's driver reports of its cgroups (docker info's CgroupVersion
-- and CgroupDriver); empty until the node's agent reports them.
ALTER TABLE nodes
    ADD COLUMN cgroup_version text NOT NULL DEFAULT '',
    ADD COLUMN cgroup_driver  text NOT NULL DEFAULT '';
