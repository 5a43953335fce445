-- Session records. Times are microseconds since the Unix epoch (UTC) so that expiry is an
-- integer comparison on an index.
CREATE TABLE sessions (
    session_id     TEXT PRIMARY KEY NOT NULL,
    user_id        TEXT NOT NULL,
    subdir         TEXT,
    cwd            TEXT NOT NULL,
    options        TEXT NOT NULL,
    metadata       TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    last_active_at INTEGER NOT NULL,
    message_count  INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX sessions_by_user ON sessions (user_id, created_at);
CREATE INDEX sessions_by_activity ON sessions (last_active_at);
