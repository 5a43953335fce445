-- API keys: only the SHA-256 of each key (lowercase hex) and its first few characters are kept,
-- never the key. The hash is unique (its index finds the key on every authenticated request).
-- Times are microseconds since the Unix epoch (UTC), as in `sessions`.
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY NOT NULL,
    name         TEXT,
    role         TEXT NOT NULL CHECK (role IN ('user', 'admin')),
    user_id      TEXT,
    hash         TEXT NOT NULL UNIQUE CHECK (length(hash) = 64 AND hash NOT GLOB '*[^0-9a-f]*'),
    prefix       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER,
    last_used_at INTEGER,
    -- A user key acts as one user; an admin key as none.
    CHECK ((role = 'admin') = (user_id IS NULL))
);

-- The audit log. It belongs to no session (no foreign key: deleting a session keeps its records)
-- and is pruned by age. AUTOINCREMENT: a number is never given twice, even after the newest
-- records were pruned, so a reader paging by id never skips new records. `detail` is JSON text.
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    action      TEXT NOT NULL,
    principal   TEXT,
    key_id      TEXT,
    user_id     TEXT,
    session_id  TEXT,
    remote_addr TEXT,
    request_id  TEXT,
    detail      TEXT NOT NULL CHECK (json_valid(detail))
);

CREATE INDEX audit_log_by_user ON audit_log (user_id, id);
CREATE INDEX audit_log_by_time ON audit_log (at);
