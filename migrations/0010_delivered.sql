-- When tether wrote a user message to the CLI's stdin (the agent had it from then on), or
-- when the CLI's transcript, read at a start after a crash, showed that it had it. Null:
-- never delivered (a message that fails or is interrupted before it reached the agent).
ALTER TABLE messages ADD COLUMN delivered_at INTEGER;
