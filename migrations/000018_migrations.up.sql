-- Instance migrations: moving an instance from its node (source) to another
-- (target), in CloudAPI's phases (begin, sync, switch; abort rolls back).
-- The target's capacity is claimed at begin (so nothing else takes it while
-- the disk is copied) and the source's released at the switch. An instance
-- has at most one migration that is not over (aborted or successful).
CREATE TABLE migrations (
    id             uuid PRIMARY KEY,
    instance_id    uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    owner_id       uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    source_node_id uuid REFERENCES nodes (id) ON DELETE SET NULL,
    target_node_id uuid REFERENCES nodes (id) ON DELETE SET NULL,
    automatic      boolean NOT NULL DEFAULT false,
    phase          text NOT NULL CHECK (phase IN ('begin', 'sync', 'switch', 'abort')),
    state          text NOT NULL CHECK (state IN ('running', 'paused', 'failed', 'aborted', 'successful')),
    error          text NOT NULL DEFAULT '',
    -- The instance's desired state when the switch began: the target
    -- starts it again when it was running.
    was_running    boolean NOT NULL DEFAULT false,
    -- Whether the instance row now points at the target node.
    switched       boolean NOT NULL DEFAULT false,
    -- What the target holds for the instance until the switch.
    memory_mib     bigint NOT NULL DEFAULT 0,
    disk_mib       bigint NOT NULL DEFAULT 0,
    vcpus_milli    bigint NOT NULL DEFAULT 0,
    progress       jsonb NOT NULL DEFAULT '[]',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);
CREATE UNIQUE INDEX migrations_active ON migrations (instance_id) WHERE state NOT IN ('aborted', 'successful');
CREATE INDEX migrations_owner ON migrations (owner_id, created_at);
CREATE INDEX migrations_target ON migrations (target_node_id) WHERE state NOT IN ('aborted', 'successful');
