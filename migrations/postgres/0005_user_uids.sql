-- Each user's operating-system uid (and gid of the same number): given once, from a configured
-- range, and never freed or given to anyone else. It belongs to the user, not to a session (no
-- foreign key: deleting a user's sessions keeps it). A uid is unsigned 32-bit, so `bigint`;
-- `(uid_t) -1` is no user's. Allocations take a transaction-scoped advisory lock (see the store);
-- the unique index on `uid` is the backstop.
CREATE TABLE user_uids (
    user_id      text PRIMARY KEY,
    uid          bigint NOT NULL UNIQUE CHECK (uid BETWEEN 0 AND 4294967294),
    allocated_at timestamptz NOT NULL
);
