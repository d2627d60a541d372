-- API tokens by id (the JWT's `jti`), so each can be listed and revoked, and one-time
-- pairing codes that a phone trades for a token of its own.
CREATE TABLE tokens (
    id           TEXT PRIMARY KEY NOT NULL,        -- the token's jti
    name         TEXT,                             -- e.g. the phone's name
    owner        TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'user')),
    paired       INTEGER NOT NULL DEFAULT 0,       -- made by pairing (else by `tether token`)
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
);
CREATE INDEX tokens_owner ON tokens (owner, created_at);

CREATE TABLE pairing_codes (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    code_hash  TEXT NOT NULL UNIQUE,               -- SHA-256 of the code, hex: the code itself is never stored
    owner      TEXT NOT NULL,                      -- whom the paired token speaks for
    name       TEXT,                               -- the name given with `tether pair --name`
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER,
    token_id   TEXT REFERENCES tokens (id)          -- the token it was traded for
);

-- The token a device was registered with: revoking the token disables the device.
ALTER TABLE devices ADD COLUMN token_id TEXT;
CREATE INDEX devices_token ON devices (token_id) WHERE token_id IS NOT NULL;
