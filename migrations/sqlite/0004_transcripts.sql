-- The CLI's transcript of each session, line by line, so a session can resume on an empty disk.
CREATE TABLE transcript_lines (
    session_id TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    n          INTEGER NOT NULL,
    path       TEXT NOT NULL,
    line       TEXT NOT NULL,
    PRIMARY KEY (session_id, n)
) WITHOUT ROWID;
