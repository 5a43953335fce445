-- API keys: only the SHA-256 of each key (lowercase hex) and its first few characters are kept,
-- never the key. The hash is unique (its index finds the key on every authenticated request).
CREATE TABLE api_keys (
    id           text PRIMARY KEY,
    name         text,
    role         text NOT NULL CHECK (role IN ('user', 'admin')),
    user_id      text,
    hash         text NOT NULL UNIQUE CHECK (hash ~ '^[0-9a-f]{64}$'),
    prefix       text NOT NULL,
    created_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    last_used_at timestamptz,
    -- A user key acts as one user; an admin key as none.
    CHECK ((role = 'admin') = (user_id IS NULL))
);

-- The audit log. It belongs to no session (no foreign key: deleting a session keeps its records)
-- and is pruned by age. Ids come from an identity sequence, taken under a transaction-scoped
-- advisory lock by every appender (see the store), so they increase in commit order and a reader
-- paging by id never skips a record. `detail` is `json`, not `jsonb`, as in `sessions` (it keeps
-- the text as written, and `jsonb` refuses the escape \u0000).
CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL,
    action      text NOT NULL,
    principal   text,
    key_id      text,
    user_id     text,
    session_id  uuid,
    remote_addr text,
    request_id  text,
    detail      json NOT NULL
);

CREATE INDEX audit_log_by_user ON audit_log (user_id, id);
CREATE INDEX audit_log_by_time ON audit_log (at);
