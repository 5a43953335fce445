-- Model usage: one row per relayed model request, kept when its session is deleted (it is what was
-- spent), with its cost in nano-dollars (sums stay exact).
CREATE TABLE usage_records (
    id                 bigserial PRIMARY KEY,
    session_id         uuid NOT NULL,
    user_id            text NOT NULL,
    turn_id            uuid,
    model              text,
    input_tokens       bigint NOT NULL CHECK (input_tokens >= 0),
    output_tokens      bigint NOT NULL CHECK (output_tokens >= 0),
    cache_read_tokens  bigint NOT NULL CHECK (cache_read_tokens >= 0),
    cache_write_tokens bigint NOT NULL CHECK (cache_write_tokens >= 0),
    cost_nanos         bigint NOT NULL CHECK (cost_nanos >= 0),
    status             integer NOT NULL,
    duration_ms        bigint NOT NULL,
    path               text NOT NULL,
    at                 timestamptz NOT NULL
);

CREATE INDEX usage_records_by_user ON usage_records (user_id, at);
CREATE INDEX usage_records_by_session ON usage_records (session_id, at);
CREATE INDEX usage_records_by_time ON usage_records (at);

-- Running totals a budget is checked against: per user and UTC day (period 'YYYY-MM-DD'), user and
-- UTC month ('YYYY-MM'), session and turn (period ''). Only ever incremented (`ON CONFLICT DO
-- UPDATE SET x = x + excluded.x`, atomic across instances), in the transaction that stores the
-- record.
CREATE TABLE usage_totals (
    scope      text NOT NULL CHECK (scope IN ('user_day', 'user_month', 'session', 'turn')),
    subject    text NOT NULL,
    period     text NOT NULL,
    cost_nanos bigint NOT NULL,
    tokens     bigint NOT NULL,
    requests   bigint NOT NULL,
    PRIMARY KEY (scope, subject, period)
);

-- A user's own limits, set by an admin (a versioned JSON row: keys absent keep the defaults).
CREATE TABLE budget_overrides (
    user_id    text PRIMARY KEY,
    limits     jsonb NOT NULL,
    updated_at timestamptz NOT NULL
);
