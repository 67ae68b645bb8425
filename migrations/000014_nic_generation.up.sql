-- The instance generation a NIC was added at: the NIC is plumbed once the
-- instance's node reports that generation (CloudAPI shows it provisioning
-- until then).
ALTER TABLE nics ADD COLUMN generation bigint NOT NULL DEFAULT 1;
