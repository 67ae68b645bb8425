-- Agents authenticate every call by credential hash.
CREATE UNIQUE INDEX nodes_credential ON nodes (credential_hash) WHERE credential_hash IS NOT NULL;
-- Change-feed readers filter by kind (the scheduler snapshot, Docker events).
CREATE INDEX changes_kind ON changes (kind, seq);
