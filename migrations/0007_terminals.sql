-- Terminals: a program (the interactive CLI or a login shell) in a pseudo-terminal that a
-- person watches and types into. A terminal moves `starting → running → exited | killed`;
-- its process is recorded (pid and OS start time) while it may run, so the next start stops a
-- survivor of a killed tether. When it ends, the tail of its output is kept for reading.
CREATE TABLE terminals (
    id                 TEXT PRIMARY KEY NOT NULL,      -- UUID
    owner              TEXT NOT NULL,
    program            TEXT NOT NULL CHECK (program IN ('claude', 'shell')),
    project_path       TEXT NOT NULL,                  -- canonical folder it runs in
    session_id         TEXT REFERENCES sessions (id),  -- the chat session whose conversation it holds
    state              TEXT NOT NULL DEFAULT 'starting'
                       CHECK (state IN ('starting', 'running', 'exited', 'killed')),
    exit_code          INTEGER,                        -- `exited`: the program's exit code
    end_reason         TEXT,                           -- why it ended (`killed`: who ended it)
    cols               INTEGER NOT NULL,
    rows               INTEGER NOT NULL,
    pid                INTEGER,                        -- the live child, to stop an orphan at start
    process_start_time INTEGER,                        -- its OS start time (s), guards pid reuse
    created_at         INTEGER NOT NULL,
    last_input_at      INTEGER,
    last_output_at     INTEGER,
    ended_at           INTEGER,
    expires_at         INTEGER NOT NULL,               -- the end: last input or attach + lifetime
    warned_at          INTEGER,                        -- the "ends soon" push of this period went out
    output_bytes       INTEGER NOT NULL DEFAULT 0,     -- bytes of output so far (the running offset)
    tail               BLOB,                           -- the output's last bytes, kept when it ended
    tail_offset        INTEGER                         -- the byte offset of the tail's first byte
);
CREATE INDEX terminals_owner ON terminals (owner, created_at);
-- One writer per conversation: at most one live terminal on a chat session.
CREATE UNIQUE INDEX terminals_one_per_session ON terminals (session_id)
    WHERE session_id IS NOT NULL AND state IN ('starting', 'running');
CREATE INDEX terminals_live ON terminals (expires_at) WHERE state IN ('starting', 'running');

-- A push is about a session or about a terminal (a shell has no session). SQLite cannot
-- drop NOT NULL in place: `pushes` is rebuilt (migrations run with foreign keys off), same
-- ids, so `push_attempts` still refers to its rows.
CREATE TABLE pushes_new (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id        INTEGER REFERENCES devices (id) ON DELETE SET NULL,
    owner            TEXT NOT NULL,
    session_id       TEXT REFERENCES sessions (id),
    terminal_id      TEXT REFERENCES terminals (id),
    message_id       INTEGER,
    kind             TEXT NOT NULL,
    title            TEXT NOT NULL,
    subtitle         TEXT,
    text             TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'sending', 'delivered', 'logged', 'failed',
                                       'cancelled')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    last_status_code INTEGER,
    last_reason      TEXT,
    apns_id          TEXT,
    error            TEXT,
    payload          TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    expires_at       INTEGER,
    approval_id      INTEGER,
    CHECK ((session_id IS NULL) <> (terminal_id IS NULL))
);
INSERT INTO pushes_new (id, device_id, owner, session_id, terminal_id, message_id, kind, title,
                        subtitle, text, status, attempts, next_attempt_at, last_status_code,
                        last_reason, apns_id, error, payload, created_at, updated_at,
                        expires_at, approval_id)
    SELECT id, device_id, owner, session_id, NULL, message_id, kind, title, subtitle, text,
           status, attempts, next_attempt_at, last_status_code, last_reason, apns_id, error,
           payload, created_at, updated_at, expires_at, approval_id
    FROM pushes;
DROP TABLE pushes;
ALTER TABLE pushes_new RENAME TO pushes;
CREATE UNIQUE INDEX pushes_event ON pushes (kind, session_id, message_id, device_id);
CREATE INDEX pushes_due ON pushes (next_attempt_at) WHERE status = 'pending';
CREATE INDEX pushes_device ON pushes (device_id, id);
CREATE INDEX pushes_session ON pushes (session_id, id);
CREATE INDEX pushes_terminal ON pushes (terminal_id, id) WHERE terminal_id IS NOT NULL;
