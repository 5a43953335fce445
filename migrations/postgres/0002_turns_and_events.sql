-- Turns and the numbered events of each session's stream. Both go with their session (deleted or
-- purged). Free text that PostgreSQL's `text` cannot hold (it refuses NUL characters, which a
-- user's message or the model's text may contain) is kept as a JSON string (`json`): the exact
-- text, readable in psql with its escapes.
CREATE TABLE turns (
    turn_id                     uuid PRIMARY KEY,
    session_id                  uuid NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    user_message                json NOT NULL,
    status                      text NOT NULL,
    error_code                  text,
    assistant_text              json NOT NULL,
    tool_calls                  json NOT NULL,
    input_tokens                bigint NOT NULL CHECK (input_tokens >= 0),
    output_tokens               bigint NOT NULL CHECK (output_tokens >= 0),
    cache_creation_input_tokens bigint NOT NULL CHECK (cache_creation_input_tokens >= 0),
    cache_read_input_tokens     bigint NOT NULL CHECK (cache_read_input_tokens >= 0),
    cost_usd                    double precision NOT NULL,
    started_at                  timestamptz NOT NULL,
    finished_at                 timestamptz
);

CREATE INDEX turns_by_session ON turns (session_id, started_at);
-- Only the few turns a crashed instance left behind are ever running at startup.
CREATE INDEX turns_running ON turns (started_at) WHERE status = 'running';

-- An event's `data` is its wire form, the exact JSON text an SSE client received (`text`, not
-- `jsonb`, which would reorder keys and normalise numbers). The primary key refuses a number
-- stored twice.
CREATE TABLE events (
    session_id uuid NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    seq        bigint NOT NULL CHECK (seq > 0),
    turn_id    uuid NOT NULL,
    data       text NOT NULL,
    at         timestamptz NOT NULL,
    PRIMARY KEY (session_id, seq)
);
