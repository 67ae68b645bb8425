-- The bearer token the control plane sends to a node's stream server (logs,
-- attach, exec). The agent generates it and reports it when it registers;
-- the control plane needs it in clear to present it.
ALTER TABLE nodes ADD COLUMN stream_token text NOT NULL DEFAULT '';
