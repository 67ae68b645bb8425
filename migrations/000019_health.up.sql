-- The health of a container with a health check, as its node last reported
-- it: {"status", "failing_streak", "log": [{"start", "end", "exit_code",
-- "output"}]}. NULL when the container has no health check or its node has
-- not reported on it since it started.
ALTER TABLE instances ADD COLUMN health jsonb;
