-- The reply to a user message is looked up by `reply_to` on every answered chat.
CREATE INDEX messages_reply_to ON messages (reply_to) WHERE reply_to IS NOT NULL;
-- Retention prunes the events of sessions that ended long ago.
CREATE INDEX sessions_ended ON sessions (ended_at) WHERE ended_at IS NOT NULL;
