-- Every turn of a session, and every event it emitted with its number in the session's stream.
-- Events keep their wire form (the JSON text an SSE client received), so a replay is identical.
CREATE TABLE turns (
    session_id   TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    turn_id      TEXT NOT NULL,
    user_message TEXT NOT NULL,
    status       TEXT NOT NULL,
    error_code   TEXT,
    text         TEXT NOT NULL DEFAULT '',
    tool_calls   TEXT NOT NULL DEFAULT '[]',
    usage        TEXT NOT NULL DEFAULT '{}',
    cost_usd     REAL NOT NULL DEFAULT 0,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    PRIMARY KEY (session_id, turn_id)
);

CREATE INDEX turns_by_start ON turns (session_id, started_at);
CREATE INDEX turns_running ON turns (status) WHERE status = 'running';

CREATE TABLE events (
    session_id TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    turn_id    TEXT NOT NULL,
    data       TEXT NOT NULL,
    at         INTEGER NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
