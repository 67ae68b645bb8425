-- Join tokens are single use and always expire: used_at is set in the
-- transaction that registers a node with the token. Tokens minted before
-- this migration never expired; they expire now.
ALTER TABLE join_tokens ADD COLUMN used_at timestamptz, ADD COLUMN used_by uuid;
UPDATE join_tokens SET expires_at = now() WHERE expires_at IS NULL;
ALTER TABLE join_tokens ALTER COLUMN expires_at SET NOT NULL;

-- An operator's approval for the next registration of an existing node
-- name without the node's current credential (a reinstalled host). The
-- registration that uses it clears it.
ALTER TABLE nodes ADD COLUMN reregister_until timestamptz;

-- HTTP Signatures that do not sign (request-target) are bound to the first
-- request they authorise (method and request target) and its client
-- connection for as long as their Date is acceptable, so a captured one
-- cannot authorise another request elsewhere (see auth.Binding).
CREATE TABLE signature_uses (
    signature_hash bytea PRIMARY KEY,
    request        text NOT NULL,
    conn           text NOT NULL,
    expires_at     timestamptz NOT NULL
);
CREATE INDEX signature_uses_expires ON signature_uses (expires_at);
