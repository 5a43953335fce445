-- Each user's operating-system uid (and gid of the same number): given once, from a configured
-- range, and never freed or given to anyone else. It belongs to the user, not to a session (no
-- foreign key: deleting a user's sessions keeps it). A uid fits in 32 bits; `(uid_t) -1` is no
-- user's. Times are microseconds since the Unix epoch (UTC), as in `sessions`.
CREATE TABLE user_uids (
    user_id      TEXT PRIMARY KEY NOT NULL,
    uid          INTEGER NOT NULL UNIQUE CHECK (uid BETWEEN 0 AND 4294967294),
    allocated_at INTEGER NOT NULL
);
