-- Firewall rules in Triton's rule language, per account. The rule text is
-- stored in its canonical form (fwrule.Rule.String).
CREATE TABLE fwrules (
    id          uuid PRIMARY KEY,
    owner_id    uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    rule        text NOT NULL CHECK (rule <> ''),
    enabled     boolean NOT NULL DEFAULT false,
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX fwrules_owner ON fwrules (owner_id, created_at);
