-- Machine snapshots: a copy of an instance's disk (a container's overlay
-- upper directory, a VM's qcow2 internal snapshot) kept on its node. The
-- control plane holds what is asked for (desired: present or deleted) and
-- what the node reported (state); the agent reconciles the one into the
-- other, as it does instances.
CREATE TABLE instance_snapshots (
    instance_id uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    owner_id    uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    desired     text NOT NULL DEFAULT 'present' CHECK (desired IN ('present', 'deleted')),
    state       text NOT NULL DEFAULT 'creating' CHECK (state IN ('creating', 'created', 'failed', 'deleted')),
    error       text NOT NULL DEFAULT '',
    size_bytes  bigint NOT NULL DEFAULT 0 CHECK (size_bytes >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- A deleted snapshot keeps its row until its name is used again.
    PRIMARY KEY (instance_id, name)
);
CREATE INDEX instance_snapshots_owner ON instance_snapshots (owner_id);

-- Starting from a snapshot: the agent restores restore_snapshot when it sees
-- a restore_count above the one it applied (as reboot_count works).
ALTER TABLE instances
    ADD COLUMN restore_count    bigint NOT NULL DEFAULT 0,
    ADD COLUMN restore_snapshot text NOT NULL DEFAULT '';
