DROP INDEX IF EXISTS changes_kind;
DROP INDEX IF EXISTS nodes_credential;
