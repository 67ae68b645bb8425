-- Accounts and their SSH keys.
CREATE TABLE accounts (
    id                        uuid PRIMARY KEY,
    login                     text NOT NULL UNIQUE CHECK (login ~ '^[a-zA-Z][a-zA-Z0-9_.@-]{1,63}$'),
    email                     text NOT NULL DEFAULT '',
    company_name              text NOT NULL DEFAULT '',
    first_name                text NOT NULL DEFAULT '',
    last_name                 text NOT NULL DEFAULT '',
    address                   text NOT NULL DEFAULT '',
    postal_code               text NOT NULL DEFAULT '',
    city                      text NOT NULL DEFAULT '',
    state                     text NOT NULL DEFAULT '',
    country                   text NOT NULL DEFAULT '',
    phone                     text NOT NULL DEFAULT '',
    operator                  boolean NOT NULL DEFAULT false,
    disabled                  boolean NOT NULL DEFAULT false,
    approved_for_provisioning boolean NOT NULL DEFAULT true,
    triton_cns_enabled        boolean NOT NULL DEFAULT false,
    default_network           uuid,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE keys (
    owner_id           uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name               text NOT NULL CHECK (name <> ''),
    fingerprint_md5    text NOT NULL,
    fingerprint_sha256 text NOT NULL,
    key_text           text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner_id, name),
    UNIQUE (owner_id, fingerprint_md5)
);
-- Docker TLS auth and key lookups by fingerprint across accounts.
CREATE INDEX keys_fingerprint_md5 ON keys (fingerprint_md5);

CREATE TABLE packages (
    id            uuid PRIMARY KEY,
    name          text NOT NULL CHECK (name <> ''),
    version       text NOT NULL DEFAULT '1.0.0',
    memory_mib    bigint NOT NULL CHECK (memory_mib > 0),
    disk_mib      bigint NOT NULL CHECK (disk_mib > 0),
    swap_mib      bigint NOT NULL DEFAULT 0,
    lwps          integer NOT NULL DEFAULT 4000,
    vcpus         integer NOT NULL DEFAULT 0 CHECK (vcpus >= 0),
    group_name    text NOT NULL DEFAULT '',
    description   text NOT NULL DEFAULT '',
    brand         text NOT NULL DEFAULT '',
    flexible_disk boolean NOT NULL DEFAULT false,
    is_default    boolean NOT NULL DEFAULT false,
    active        boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (name, version)
);

-- CloudAPI images and Docker images in one table. owner_id NULL = operator-provided.
CREATE TABLE images (
    id              uuid PRIMARY KEY,
    owner_id        uuid REFERENCES accounts (id) ON DELETE CASCADE,
    name            text NOT NULL,
    version         text NOT NULL DEFAULT '',
    os              text NOT NULL DEFAULT 'other',
    type            text NOT NULL CHECK (type IN ('zone-dataset','lx-dataset','zvol','docker','other')),
    description     text NOT NULL DEFAULT '',
    homepage        text NOT NULL DEFAULT '',
    public          boolean NOT NULL DEFAULT false,
    state           text NOT NULL DEFAULT 'active' CHECK (state IN ('active','unactivated','disabled','creating','failed')),
    published_at    timestamptz,
    tags            jsonb NOT NULL DEFAULT '{}',
    requirements    jsonb NOT NULL DEFAULT '{}',
    acl             jsonb NOT NULL DEFAULT '[]',
    image_size      bigint,
    -- OCI: manifest digest, media type, raw config and layer descriptors.
    manifest_digest text NOT NULL DEFAULT '',
    manifest        jsonb,
    config          jsonb,
    size_bytes      bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX images_owner ON images (owner_id);
CREATE INDEX images_name ON images (name, version);

-- Docker repository tags (repo:tag -> image), per account.
CREATE TABLE image_tags (
    owner_id  uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    repo      text NOT NULL,
    tag       text NOT NULL,
    image_id  uuid NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    PRIMARY KEY (owner_id, repo, tag)
);

CREATE TABLE networks (
    id               uuid PRIMARY KEY,
    owner_id         uuid REFERENCES accounts (id) ON DELETE CASCADE,
    name             text NOT NULL CHECK (name <> ''),
    public           boolean NOT NULL DEFAULT false,
    description      text NOT NULL DEFAULT '',
    subnet           cidr NOT NULL,
    gateway          inet,
    provision_start  inet NOT NULL,
    provision_end    inet NOT NULL,
    resolvers        jsonb NOT NULL DEFAULT '[]',
    routes           jsonb NOT NULL DEFAULT '{}',
    fabric           boolean NOT NULL DEFAULT false,
    vlan_id          integer NOT NULL DEFAULT 0,
    internet_nat     boolean NOT NULL DEFAULT true,
    bridge           text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (provision_start <= provision_end),
    CHECK (provision_start << subnet AND provision_end << subnet)
);
CREATE UNIQUE INDEX networks_name ON networks (COALESCE(owner_id, '00000000-0000-0000-0000-000000000000'::uuid), name);
CREATE UNIQUE INDEX networks_bridge ON networks (bridge);

-- Compute nodes. Capacity is enforced here: no code path can overbook a node.
CREATE TABLE nodes (
    id               uuid PRIMARY KEY,
    name             text NOT NULL UNIQUE,
    hostname         text NOT NULL DEFAULT '',
    state            text NOT NULL DEFAULT 'running' CHECK (state IN ('running','offline')),
    drained          boolean NOT NULL DEFAULT false,
    reserved         boolean NOT NULL DEFAULT false,
    driver           text NOT NULL DEFAULT '',
    brands           text[] NOT NULL DEFAULT '{}',
    traits           jsonb NOT NULL DEFAULT '{}',
    address          text NOT NULL DEFAULT '',
    memory_mib       bigint NOT NULL CHECK (memory_mib >= 0),
    disk_mib         bigint NOT NULL CHECK (disk_mib >= 0),
    vcpus_milli      bigint NOT NULL CHECK (vcpus_milli >= 0),
    max_instances    integer NOT NULL DEFAULT 1000 CHECK (max_instances >= 0),
    ratio_memory     double precision NOT NULL DEFAULT 1.0 CHECK (ratio_memory > 0),
    ratio_disk       double precision NOT NULL DEFAULT 1.0 CHECK (ratio_disk > 0),
    ratio_vcpu       double precision NOT NULL DEFAULT 4.0 CHECK (ratio_vcpu > 0),
    used_memory_mib  bigint NOT NULL DEFAULT 0 CHECK (used_memory_mib >= 0),
    used_disk_mib    bigint NOT NULL DEFAULT 0 CHECK (used_disk_mib >= 0),
    used_vcpus_milli bigint NOT NULL DEFAULT 0 CHECK (used_vcpus_milli >= 0),
    instances        integer NOT NULL DEFAULT 0 CHECK (instances >= 0),
    credential_hash  bytea,
    assign_rev       bigint NOT NULL DEFAULT 0,
    last_heartbeat   timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT nodes_memory_capacity CHECK (used_memory_mib <= floor(memory_mib * ratio_memory)),
    CONSTRAINT nodes_disk_capacity   CHECK (used_disk_mib <= floor(disk_mib * ratio_disk)),
    CONSTRAINT nodes_vcpu_capacity   CHECK (used_vcpus_milli <= floor(vcpus_milli * ratio_vcpu)),
    CONSTRAINT nodes_instance_count  CHECK (instances <= max_instances)
);

CREATE TABLE join_tokens (
    token_hash bytea PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz
);

CREATE TABLE instances (
    id                    uuid PRIMARY KEY,
    owner_id              uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name                  text NOT NULL CHECK (name <> ''),
    brand                 text NOT NULL,
    image_id              uuid NOT NULL,
    package_id            uuid,
    package_name          text NOT NULL DEFAULT '',
    memory_mib            bigint NOT NULL,
    disk_mib              bigint NOT NULL,
    vcpus_milli           bigint NOT NULL DEFAULT 0,
    node_id               uuid REFERENCES nodes (id),
    state                 text NOT NULL DEFAULT 'provisioning'
                          CHECK (state IN ('provisioning','running','stopping','stopped','failed','deleted','unknown','offline','ready')),
    desired_state         text NOT NULL DEFAULT 'running' CHECK (desired_state IN ('running','stopped','deleted')),
    generation            bigint NOT NULL DEFAULT 1,
    observed_generation   bigint NOT NULL DEFAULT 0,
    reboot_count          bigint NOT NULL DEFAULT 0,
    observed_reboot_count bigint NOT NULL DEFAULT 0,
    assign_rev            bigint NOT NULL DEFAULT 0,
    docker                boolean NOT NULL DEFAULT false,
    spec                  jsonb NOT NULL DEFAULT '{}',
    metadata              jsonb NOT NULL DEFAULT '{}',
    tags                  jsonb NOT NULL DEFAULT '{}',
    affinity              jsonb NOT NULL DEFAULT '[]',
    placement             jsonb,
    firewall_enabled      boolean NOT NULL DEFAULT false,
    deletion_protection   boolean NOT NULL DEFAULT false,
    exit_code             integer,
    restarts              integer NOT NULL DEFAULT 0,
    error                 text NOT NULL DEFAULT '',
    started_at            timestamptz,
    finished_at           timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    deleted_at            timestamptz
);
-- Names are unique per account among live instances.
CREATE UNIQUE INDEX instances_owner_name ON instances (owner_id, name) WHERE desired_state <> 'deleted';
CREATE INDEX instances_owner ON instances (owner_id, created_at);
CREATE INDEX instances_node_rev ON instances (node_id, assign_rev);

-- IPAM: one row per allocated address; the primary key makes double allocation impossible.
CREATE TABLE network_ips (
    network_id  uuid NOT NULL REFERENCES networks (id) ON DELETE CASCADE,
    ip          inet NOT NULL,
    instance_id uuid REFERENCES instances (id) ON DELETE CASCADE,
    owner_id    uuid,
    reserved    boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (network_id, ip)
);
CREATE INDEX network_ips_instance ON network_ips (instance_id);

CREATE TABLE nics (
    mac         text PRIMARY KEY,
    instance_id uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    owner_id    uuid NOT NULL,
    network_id  uuid NOT NULL REFERENCES networks (id),
    ip          inet NOT NULL,
    is_primary  boolean NOT NULL DEFAULT false,
    position    integer NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (network_id, ip)
);
CREATE INDEX nics_instance ON nics (instance_id);

-- Append-only change feed (CloudAPI changefeed, Docker events, scheduler snapshots).
CREATE TABLE changes (
    seq         bigserial PRIMARY KEY,
    kind        text NOT NULL,           -- instance | node | image | network
    object_id   uuid NOT NULL,
    owner_id    uuid,
    node_id     uuid,
    action      text NOT NULL,           -- create | update | state | delete | ...
    state       text NOT NULL DEFAULT '',
    detail      jsonb NOT NULL DEFAULT '{}',
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX changes_owner ON changes (owner_id, seq);

CREATE TABLE audit (
    id          bigserial PRIMARY KEY,
    owner_id    uuid NOT NULL,
    instance_id uuid,
    action      text NOT NULL,
    success     boolean NOT NULL DEFAULT true,
    caller      jsonb NOT NULL DEFAULT '{}',
    params      jsonb NOT NULL DEFAULT '{}',
    -- An action on an instance is a job: it stays pending until the node
    -- reports the instance's generation, and then takes its finishing time.
    generation  bigint NOT NULL DEFAULT 0,
    pending     boolean NOT NULL DEFAULT false,
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX audit_instance ON audit (instance_id, at);
CREATE INDEX audit_pending ON audit (instance_id) WHERE pending;

CREATE TABLE idempotency_keys (
    owner_id     uuid NOT NULL,
    key          text NOT NULL,
    request_hash text NOT NULL,
    status       integer NOT NULL DEFAULT 0,
    response     bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner_id, key)
);

-- Leader leases (node monitor).
CREATE TABLE leases (
    name       text PRIMARY KEY,
    holder     text NOT NULL,
    expires_at timestamptz NOT NULL
);
