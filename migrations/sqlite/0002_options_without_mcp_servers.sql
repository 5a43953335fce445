-- Options rows no longer hold MCP servers: their `env` and `headers` are credentials, and the
-- agent takes them from the configuration. Scrub the rows written before (the store's
-- `secure_delete` overwrites the old content).
UPDATE sessions
SET options = json_remove(options, '$.mcp_servers')
WHERE json_valid(options) AND json_type(options, '$.mcp_servers') IS NOT NULL;
