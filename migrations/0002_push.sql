-- Pushes: the owners' devices (APNs tokens), the outbox of pushes (also the ledger of what
-- was sent), and one row per attempt to send a push with APNs' answer.
-- Times are milliseconds since the Unix epoch (UTC), as in 0001.

CREATE TABLE devices (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    owner           TEXT NOT NULL,                   -- `sub` of the token that registered it
    token           TEXT NOT NULL UNIQUE,            -- APNs device token, lowercase hex
    environment     TEXT NOT NULL
                    CHECK (environment IN ('sandbox', 'production')),
    topic           TEXT,                            -- bundle id; NULL: push.apns.topic
    name            TEXT,                            -- what the owner calls the phone
    created_at      INTEGER NOT NULL,
    last_seen_at    INTEGER NOT NULL,                -- last (re-)registration; beats a 410's timestamp
    disabled_at     INTEGER,                         -- set when APNs rejected the token
    disabled_reason TEXT                             -- e.g. "410 Unregistered"
);
CREATE INDEX devices_owner_active ON devices (owner) WHERE disabled_at IS NULL;

-- Status of a push:
--   pending   waiting to be sent at next_attempt_at (new, or retrying after a transient error)
--   sending   claimed by the worker; a row still `sending` at start goes back to `pending`
--   delivered APNs answered 200
--   logged    the log gateway took it (no APNs key configured): never sent to Apple
--   failed    will not be sent: APNs refused it for good or attempts ran out (see error)
--   cancelled its device was disabled or removed before it was sent
CREATE TABLE pushes (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id        INTEGER REFERENCES devices (id) ON DELETE SET NULL,
    owner            TEXT NOT NULL,
    session_id       TEXT NOT NULL REFERENCES sessions (id),
    message_id       INTEGER,                        -- the reply (or failed message) to open
    kind             TEXT NOT NULL,                  -- turn_completed, turn_failed, …
    title            TEXT NOT NULL,
    subtitle         TEXT,
    text             TEXT NOT NULL,                  -- plain text (markdown stripped), cut to 4096 chars
    status           TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'sending', 'delivered', 'logged', 'failed',
                                       'cancelled')),
    attempts         INTEGER NOT NULL DEFAULT 0,     -- sends tried (rows in push_attempts)
    next_attempt_at  INTEGER NOT NULL,
    last_status_code INTEGER,                        -- HTTP status of the last answer
    last_reason      TEXT,                           -- APNs reason of the last answer
    apns_id          TEXT,                           -- apns-id of the last answer
    error            TEXT,                           -- why it failed, was cancelled, or is retrying
    payload          TEXT,                           -- the exact JSON of the last attempt
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
-- One push per event and device: enqueueing the same event again adds nothing. Events
-- without a message (a process exit) have a NULL message_id and are each their own event.
CREATE UNIQUE INDEX pushes_event ON pushes (kind, session_id, message_id, device_id);
CREATE INDEX pushes_due ON pushes (next_attempt_at) WHERE status = 'pending';
CREATE INDEX pushes_device ON pushes (device_id, id);
CREATE INDEX pushes_session ON pushes (session_id, id);

CREATE TABLE push_attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    push_id     INTEGER NOT NULL REFERENCES pushes (id) ON DELETE CASCADE,
    status_code INTEGER,                             -- HTTP status; NULL: no answer (transport error)
    reason      TEXT,                                -- APNs reason, e.g. BadDeviceToken
    apns_id     TEXT,
    timestamp   INTEGER,                             -- the 410 body's timestamp (ms)
    error       TEXT,                                -- transport or local error text
    action      TEXT NOT NULL,                       -- what tether did: delivered, retry, …
    at          INTEGER NOT NULL
);
CREATE INDEX push_attempts_push ON push_attempts (push_id, id);
