-- Volumes: named storage an account mounts into its containers, from
-- CloudAPI (type tritonnfs) or Docker (type local). The storage lives on
-- the node of the first instance that mounts it (node_id, set then);
-- later instances that mount it are placed on that node.
CREATE TABLE volumes (
    id          uuid PRIMARY KEY,
    owner_id    uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (name <> ''),
    type        text NOT NULL CHECK (type IN ('tritonnfs', 'local')),
    size_mib    bigint NOT NULL CHECK (size_mib > 0),
    state       text NOT NULL DEFAULT 'ready' CHECK (state IN ('creating', 'ready', 'deleting', 'failed', 'deleted')),
    anonymous   boolean NOT NULL DEFAULT false,
    labels      jsonb NOT NULL DEFAULT '{}',
    tags        jsonb NOT NULL DEFAULT '{}',
    node_id     uuid REFERENCES nodes (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- A deleted volume keeps its row (CloudAPI answers VolumeNotFound for it,
-- which `triton volume delete -w` waits for) and frees its name.
CREATE UNIQUE INDEX volumes_owner_name ON volumes (owner_id, name) WHERE state <> 'deleted';
