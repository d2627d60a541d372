-- Sessions, their messages, and the sequence-numbered event log of each session.
-- Times are milliseconds since the Unix epoch (UTC).

CREATE TABLE sessions (
    id                 TEXT PRIMARY KEY NOT NULL,      -- UUID, also the CLI's --session-id
    owner              TEXT NOT NULL,                  -- subject of the token that created it
    agent              TEXT NOT NULL DEFAULT 'claude',
    project_path       TEXT NOT NULL,                  -- canonical folder the process runs in
    title              TEXT,
    state              TEXT NOT NULL DEFAULT 'active'
                       CHECK (state IN ('active', 'ended')),
    agent_session_id   TEXT,                           -- session_id of the latest `result`
    transcript_started INTEGER NOT NULL DEFAULT 0,     -- a turn was sent: start with --resume
    total_cost_usd     REAL NOT NULL DEFAULT 0,
    created_at         INTEGER NOT NULL,
    last_activity_at   INTEGER NOT NULL,
    ended_at           INTEGER,
    end_reason         TEXT,
    process_pid        INTEGER,                        -- the live child, to stop orphans at start
    process_start_time INTEGER                         -- its OS start time (s), guards pid reuse
);
CREATE INDEX sessions_owner ON sessions (owner, last_activity_at);

CREATE TABLE messages (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id        TEXT NOT NULL REFERENCES sessions (id),
    owner             TEXT NOT NULL,
    role              TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    status            TEXT NOT NULL
                      CHECK (status IN ('queued', 'running', 'completed', 'failed',
                                        'interrupted', 'cancelled')),
    text              TEXT NOT NULL,
    client_message_id TEXT,
    reply_to          INTEGER REFERENCES messages (id),  -- assistant: the user message answered
    error             TEXT,                              -- reason of a terminal state other than completed
    cost_usd          REAL,
    duration_ms       INTEGER,
    usage             TEXT,                              -- JSON `usage` of the turn's result
    created_at        INTEGER NOT NULL,
    started_at        INTEGER,
    finished_at       INTEGER
);
CREATE INDEX messages_session ON messages (session_id, id);
CREATE INDEX messages_pending ON messages (status) WHERE status IN ('queued', 'running');
CREATE UNIQUE INDEX messages_client_id ON messages (owner, client_message_id)
    WHERE client_message_id IS NOT NULL;

CREATE TABLE events (
    session_id TEXT NOT NULL REFERENCES sessions (id),
    seq        INTEGER NOT NULL,
    type       TEXT NOT NULL,
    data       TEXT NOT NULL,                            -- the JSON of the line, kept whole
    created_at INTEGER NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
