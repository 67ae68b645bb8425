ALTER TABLE nodes DROP COLUMN underlay_ip;
DROP TABLE fabric_subnet_pool;
DROP INDEX networks_vlan_idx;
ALTER TABLE networks DROP CONSTRAINT networks_fabric_owned;
ALTER TABLE networks DROP CONSTRAINT networks_vlan;
ALTER TABLE networks DROP COLUMN vni;
DROP TABLE fabric_vlans;
DROP SEQUENCE fabric_vni_seq;
