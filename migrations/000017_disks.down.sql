DROP TABLE IF EXISTS instance_disks;
