-- Docker labels of a network (docker network create --label, and the
-- com.docker.compose.* labels docker compose finds its networks by).
ALTER TABLE networks ADD COLUMN labels jsonb NOT NULL DEFAULT '{}';
