-- Fabric VLANs: each account's own layer-2 segments. Every VLAN has a
-- datacenter-wide VXLAN network identifier (vni) that carries it between nodes.
CREATE SEQUENCE fabric_vni_seq MINVALUE 4096 MAXVALUE 16777215 START 4096;
-- Each database starts at a random point, so that two clouds sharing a
-- host (test clouds, a dev cloud beside a test) rarely pick the same VNI
-- and so the same bridge names.
SELECT setval('fabric_vni_seq', 4096 + floor(random() * 12000000)::bigint);

CREATE TABLE fabric_vlans (
    owner_id    uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    vlan_id     integer NOT NULL CHECK (vlan_id BETWEEN 0 AND 4095),
    name        text NOT NULL CHECK (name <> ''),
    description text NOT NULL DEFAULT '',
    vni         integer NOT NULL UNIQUE DEFAULT nextval('fabric_vni_seq'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner_id, vlan_id),
    UNIQUE (owner_id, name)
);

-- Networks that tenants already made become networks of VLAN vlan_id of
-- their account.
INSERT INTO fabric_vlans (owner_id, vlan_id, name)
SELECT DISTINCT owner_id, vlan_id, 'VLAN-' || vlan_id FROM networks WHERE owner_id IS NOT NULL;
UPDATE networks SET fabric = true WHERE owner_id IS NOT NULL;

ALTER TABLE networks ADD COLUMN vni integer NOT NULL DEFAULT 0;
UPDATE networks w SET vni = v.vni FROM fabric_vlans v WHERE v.owner_id = w.owner_id AND v.vlan_id = w.vlan_id;
-- A fabric network belongs to a VLAN of its owner; shared networks have no owner.
ALTER TABLE networks ADD CONSTRAINT networks_vlan FOREIGN KEY (owner_id, vlan_id) REFERENCES fabric_vlans (owner_id, vlan_id);
ALTER TABLE networks ADD CONSTRAINT networks_fabric_owned CHECK (fabric = (owner_id IS NOT NULL));
CREATE INDEX networks_vlan_idx ON networks (owner_id, vlan_id);

-- The operator's pool of address space tenants may number fabric networks from.
CREATE TABLE fabric_subnet_pool (
    prefix     cidr PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The underlay address other nodes send this node's VXLAN traffic to.
ALTER TABLE nodes ADD COLUMN underlay_ip text NOT NULL DEFAULT '';
