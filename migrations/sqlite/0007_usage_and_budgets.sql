-- Model usage: one row per relayed model request, kept when its session is deleted (it is what was
-- spent), with its cost in nano-dollars (sums stay exact). Times are microseconds since the epoch.
CREATE TABLE usage_records (
    id                 INTEGER PRIMARY KEY,
    session_id         TEXT NOT NULL,
    user_id            TEXT NOT NULL,
    turn_id            TEXT,
    model              TEXT,
    input_tokens       INTEGER NOT NULL CHECK (input_tokens >= 0),
    output_tokens      INTEGER NOT NULL CHECK (output_tokens >= 0),
    cache_read_tokens  INTEGER NOT NULL CHECK (cache_read_tokens >= 0),
    cache_write_tokens INTEGER NOT NULL CHECK (cache_write_tokens >= 0),
    cost_nanos         INTEGER NOT NULL CHECK (cost_nanos >= 0),
    status             INTEGER NOT NULL,
    duration_ms        INTEGER NOT NULL,
    path               TEXT NOT NULL,
    at                 INTEGER NOT NULL
);

CREATE INDEX usage_records_by_user ON usage_records (user_id, at);
CREATE INDEX usage_records_by_session ON usage_records (session_id, at);
CREATE INDEX usage_records_by_time ON usage_records (at);

-- Running totals a budget is checked against: per user and UTC day (period 'YYYY-MM-DD'), user and
-- UTC month ('YYYY-MM'), session and turn (period ''). Only ever incremented, in the transaction
-- that stores the record.
CREATE TABLE usage_totals (
    scope      TEXT NOT NULL CHECK (scope IN ('user_day', 'user_month', 'session', 'turn')),
    subject    TEXT NOT NULL,
    period     TEXT NOT NULL,
    cost_nanos INTEGER NOT NULL,
    tokens     INTEGER NOT NULL,
    requests   INTEGER NOT NULL,
    PRIMARY KEY (scope, subject, period)
) WITHOUT ROWID;

-- A user's own limits, set by an admin (a versioned JSON row: keys absent keep the defaults).
CREATE TABLE budget_overrides (
    user_id    TEXT PRIMARY KEY,
    limits     TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
