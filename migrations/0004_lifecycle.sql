-- The session lifecycle: every session has an end (`expires_at`), moved by activity and
-- keep-alives, and is warned once per period before it (`warned_at`); a session past its
-- end is `expired`. A push can have an expiration (`pushes.expires_at`), after which it is
-- worthless and not sent.
--
-- SQLite cannot change a CHECK constraint in place: `sessions` is rebuilt (migrations run
-- on a connection with foreign keys off, as other tables refer to it).
CREATE TABLE sessions_new (
    id                 TEXT PRIMARY KEY NOT NULL,
    owner              TEXT NOT NULL,
    agent              TEXT NOT NULL DEFAULT 'claude',
    project_path       TEXT NOT NULL,
    title              TEXT,
    state              TEXT NOT NULL DEFAULT 'active'
                       CHECK (state IN ('active', 'ended', 'expired')),
    agent_session_id   TEXT,
    transcript_started INTEGER NOT NULL DEFAULT 0,
    total_cost_usd     REAL NOT NULL DEFAULT 0,
    created_at         INTEGER NOT NULL,
    last_activity_at   INTEGER NOT NULL,
    ended_at           INTEGER,
    end_reason         TEXT,
    process_pid        INTEGER,
    process_start_time INTEGER,
    expires_at         INTEGER NOT NULL,               -- the end: last message or keep-alive + lifetime
    warned_at          INTEGER                         -- the "expires soon" push of this period went out
);
INSERT INTO sessions_new
    SELECT id, owner, agent, project_path, title, state, agent_session_id, transcript_started,
           total_cost_usd, created_at, last_activity_at, ended_at, end_reason, process_pid,
           process_start_time, last_activity_at + 86400000, NULL
    FROM sessions;
DROP TABLE sessions;
ALTER TABLE sessions_new RENAME TO sessions;
CREATE INDEX sessions_owner ON sessions (owner, last_activity_at);
CREATE INDEX sessions_ended ON sessions (ended_at) WHERE ended_at IS NOT NULL;
-- The scheduler's look for the next warning or end.
CREATE INDEX sessions_expiry ON sessions (expires_at) WHERE state = 'active';

ALTER TABLE pushes ADD COLUMN expires_at INTEGER;      -- APNs expiration (ms); not sent after it
