-- Approvals: the agent asks before using a tool (or asks the user a question) and waits for
-- the owner's answer from the phone. One row per request, from the moment it is asked until
-- it is decided or can no longer be (the turn or process ended, tether restarted).
CREATE TABLE approvals (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id  TEXT NOT NULL REFERENCES sessions (id),
    message_id  INTEGER NOT NULL REFERENCES messages (id),  -- the user message whose turn asked
    request_id  TEXT NOT NULL,                               -- the agent's id, quoted in the answer
    kind        TEXT NOT NULL CHECK (kind IN ('tool', 'question')),
    tool_name   TEXT NOT NULL,
    input       TEXT NOT NULL,          -- JSON of the tool's input, cut to approvals.max_input_bytes
    input_cut   INTEGER NOT NULL DEFAULT 0,                  -- the stored input is not the whole
    description TEXT,
    suggestions TEXT,                                        -- JSON: what the agent offers to remember
    status      TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'allowed', 'denied', 'expired', 'cancelled')),
    decision    TEXT,                   -- JSON of the answer sent (allow/deny, message, answers)
    decided_by  TEXT,                   -- the owner who decided, or `tether` (auto-deny, ends)
    reason      TEXT,                   -- why it expired or was cancelled
    created_at  INTEGER NOT NULL,
    decided_at  INTEGER
);
CREATE INDEX approvals_session ON approvals (session_id, id);
CREATE INDEX approvals_pending ON approvals (message_id) WHERE status = 'pending';

-- The permission mode a session runs with (NULL: agent.permission_mode), kept across starts.
ALTER TABLE sessions ADD COLUMN permission_mode TEXT;
-- The approval a push is about (its `approvalId` custom key).
ALTER TABLE pushes ADD COLUMN approval_id INTEGER;
