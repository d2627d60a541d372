-- Warm spare processes (sessions.warm_spares): CLI processes started ahead, each with a
-- fresh conversation id, waiting for a new session. Recorded so that a start after a crash
-- stops any that were left behind; a row goes when its spare is stopped or taken.
CREATE TABLE spare_processes (
    pid             INTEGER PRIMARY KEY NOT NULL,
    start_time      INTEGER NOT NULL,   -- the OS start time, to tell it from a reused pid
    conversation_id TEXT NOT NULL,
    project_path    TEXT NOT NULL,
    created_at      INTEGER NOT NULL
);
