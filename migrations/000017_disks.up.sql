-- The disks of a VM on a flexible-disk package (CloudAPI's machine disks).
-- A row is asked-for state: its last change (pending: create, resize or
-- delete) was written at instance generation `generation`, and is applied
-- once the instance's node reports that generation (CloudAPI shows the disk
-- creating, resizing or deleting until then). A deleted disk's row goes
-- when its node has applied the delete.
CREATE TABLE instance_disks (
    id          uuid PRIMARY KEY,
    instance_id uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    owner_id    uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    -- The disk's place on the VM: 0 is the boot disk, data disks 1 to 7.
    slot        integer NOT NULL CHECK (slot BETWEEN 0 AND 7),
    boot        boolean NOT NULL DEFAULT false CHECK (boot = (slot = 0)),
    size_mib    bigint NOT NULL CHECK (size_mib > 0),
    generation  bigint NOT NULL,
    pending     text NOT NULL DEFAULT 'create' CHECK (pending IN ('create', 'resize', 'delete')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (instance_id, slot)
);
CREATE INDEX instance_disks_owner ON instance_disks (owner_id, instance_id);
