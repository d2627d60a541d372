-- The reply to a user message is looked up by `reply_to` on every answered chat.
CREATE INDEX messages_reply_to ON messages (reply_to) WHERE reply_to IS NOT NULL;
-- Retention prunes the events of sessions that ended long ago.
CREATE INDEX sessions_ended ON sessions (ended_at) WHERE ended_at IS NOT NULL;
-- Each session's queue: its next message (and its queue depth) without reading the rest.
CREATE INDEX messages_queue ON messages (session_id, id) WHERE status = 'queued';
