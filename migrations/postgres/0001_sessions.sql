-- Session records. Ids are `uuid` (16 bytes, and a malformed id cannot be stored); times are
-- `timestamptz` (microseconds, as the SQLite store keeps them). `options` and `metadata` are `json`,
-- not `jsonb`: `jsonb` refuses the escape \u0000, which JSON (and a client's metadata) may hold,
-- and `json` keeps the text exactly as the service wrote it while still answering `->`/`->>`.
CREATE TABLE sessions (
    session_id     uuid PRIMARY KEY,
    user_id        text NOT NULL,
    subdir         text,
    cwd            text NOT NULL,
    options        json NOT NULL,
    metadata       json NOT NULL,
    created_at     timestamptz NOT NULL,
    last_active_at timestamptz NOT NULL,
    message_count  bigint NOT NULL DEFAULT 0 CHECK (message_count >= 0)
);

CREATE INDEX sessions_by_user ON sessions (user_id, created_at);
CREATE INDEX sessions_by_activity ON sessions (last_active_at);
