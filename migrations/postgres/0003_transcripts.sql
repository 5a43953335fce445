-- The CLI's transcript of each session, line by line, so a session can resume on an empty disk.
CREATE TABLE transcript_lines (
    session_id uuid   NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    n          bigint NOT NULL,
    path       text   NOT NULL,
    line       text   NOT NULL,
    PRIMARY KEY (session_id, n)
);
