//! The one list of error codes: each code's wire string, the status it is sent with and
//! what it means. An `ApiError` is built from a code; a route's documented errors
//! (`/openapi.json`) are the codes it lists in the route table, each with its meaning.
//!
//! To add a code: add a line to the table below, answer it with `ApiError::new(code, …)`
//! (or map a domain refusal to it in `refusals.rs`), and list it in the `errors` of each
//! route that can answer it (`Routes::add`).

use axum::http::StatusCode;
use serde::{Serialize, Serializer};

macro_rules! codes {
    ($($variant:ident = $wire:literal, $status:ident, $meaning:literal;)*) => {
        /// A stable, snake_case error code; its status and meaning are fixed with it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ErrorCode {
            $(
                #[doc = $meaning]
                $variant,
            )*
        }

        impl ErrorCode {
            /// Every code, in the order of the table.
            pub const ALL: &'static [ErrorCode] = &[$(Self::$variant,)*];

            /// The code as clients read it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $wire,)*
                }
            }

            /// The status it is always sent with (`/v1` shows 422 as 400, as OpenAI does).
            pub const fn status(self) -> StatusCode {
                match self {
                    $(Self::$variant => StatusCode::$status,)*
                }
            }

            /// When it is sent, in one line (the OpenAPI document's words for it).
            pub const fn meaning(self) -> &'static str {
                match self {
                    $(Self::$variant => $meaning,)*
                }
            }
        }
    };
}

codes! {
    // The edge: the listener, the Host check, the guard, the extractors.
    MissingHost = "missing_host", BAD_REQUEST,
        "an HTTP/1.1 request without a `Host` header, or with several";
    MalformedRequest = "malformed_request", BAD_REQUEST,
        "the request line or a header is not valid HTTP/1.1";
    HostNotAllowed = "host_not_allowed", MISDIRECTED_REQUEST,
        "`Host` names neither an IP address, `localhost`, this machine nor one of `server.allowed_hosts`";
    OriginNotAllowed = "origin_not_allowed", FORBIDDEN,
        "the WebSocket upgrade's `Origin` names a host this server does not answer to";
    UriTooLong = "uri_too_long", URI_TOO_LONG,
        "the request target is longer than `server.max_uri_bytes`";
    HeadersTooLarge = "headers_too_large", REQUEST_HEADER_FIELDS_TOO_LARGE,
        "more headers than `server.max_headers`, or more bytes of them than `server.max_header_bytes`";
    TooManyRequests = "too_many_requests", TOO_MANY_REQUESTS,
        "more than `server.requests_per_minute` requests from this token (from this address, without one) in a minute";
    ShuttingDown = "shutting_down", SERVICE_UNAVAILABLE,
        "the server is stopping; try again in a moment";
    RequestTimeout = "request_timeout", SERVICE_UNAVAILABLE,
        "the answer took longer than `server.request_timeout`";
    RouteNotFound = "route_not_found", NOT_FOUND,
        "no such route";
    MethodNotAllowed = "method_not_allowed", METHOD_NOT_ALLOWED,
        "the route does not take this method (the `Allow` header lists those it takes)";
    InvalidPath = "invalid_path", BAD_REQUEST,
        "a path parameter is not UTF-8 once percent-decoded";
    InvalidQuery = "invalid_query", UNPROCESSABLE_ENTITY,
        "a query parameter is not of its type (such as a number that is not one)";
    MalformedJson = "malformed_json", BAD_REQUEST,
        "the body is not JSON";
    UnreadableBody = "unreadable_body", BAD_REQUEST,
        "the body could not be read";
    BodyTimeout = "body_timeout", REQUEST_TIMEOUT,
        "the body did not arrive within `server.body_read_timeout` (`server.body_read_timeout_anonymous` without a valid token)";
    BodyTooLarge = "body_too_large", PAYLOAD_TOO_LARGE,
        "the body is larger than `server.max_body_bytes`";
    UnsupportedMediaType = "unsupported_media_type", UNSUPPORTED_MEDIA_TYPE,
        "the body is not sent as `Content-Type: application/json`";
    InvalidBody = "invalid_body", UNPROCESSABLE_ENTITY,
        "a field of the body is missing, unknown or of the wrong type";
    Unauthorized = "unauthorized", UNAUTHORIZED,
        "no `Authorization: Bearer` token, or one that is invalid, expired or revoked (pairing: the code is wrong, used or expired)";
    Forbidden = "forbidden", FORBIDDEN,
        "the caller may not do this: a user's token on an admin route, or a folder outside `projects.roots`";
    InternalError = "internal_error", INTERNAL_SERVER_ERROR,
        "the server failed (its log says why)";
    StorageUnavailable = "storage_unavailable", SERVICE_UNAVAILABLE,
        "the database cannot be written (disk full, read-only, I/O error); nothing was changed; try again after `Retry-After`";
    InvalidLimit = "invalid_limit", UNPROCESSABLE_ENTITY,
        "`limit` is not 1 to 1000";
    InvalidStatus = "invalid_status", UNPROCESSABLE_ENTITY,
        "`status` is not one of the listed things' states";
    AgentUnavailable = "agent_unavailable", SERVICE_UNAVAILABLE,
        "the agent command is missing (the message says what to do)";

    // Sessions and messages.
    SessionNotFound = "session_not_found", NOT_FOUND,
        "no such session (or not the caller's)";
    SessionEnded = "session_ended", CONFLICT,
        "the session was ended by its owner; start a new one";
    SessionExpired = "session_expired", GONE,
        "the session expired; its history stays readable";
    InvalidSessionId = "invalid_session_id", UNPROCESSABLE_ENTITY,
        "`sessionId` is not a UUID";
    EmptyMessage = "empty_message", UNPROCESSABLE_ENTITY,
        "the message is empty";
    MessageTooLarge = "message_too_large", PAYLOAD_TOO_LARGE,
        "the message is longer than `sessions.max_message_bytes`";
    InvalidClientMessageId = "invalid_client_message_id", UNPROCESSABLE_ENTITY,
        "`clientMessageId` is empty or longer than 128 bytes";
    ProjectPathRequired = "project_path_required", UNPROCESSABLE_ENTITY,
        "neither a session nor a project folder was given";
    InvalidProjectPath = "invalid_project_path", UNPROCESSABLE_ENTITY,
        "`projectPath` is missing or not absolute";
    ProjectNotFound = "project_not_found", UNPROCESSABLE_ENTITY,
        "the project folder does not exist";
    ProjectNotADirectory = "project_not_a_directory", UNPROCESSABLE_ENTITY,
        "the project folder is a file";
    QueueFull = "queue_full", TOO_MANY_REQUESTS,
        "`sessions.max_queued_per_session` messages already wait in the session";
    TooManySessions = "too_many_sessions", TOO_MANY_REQUESTS,
        "`sessions.max_active_per_owner` sessions are active";
    TooManyNewSessions = "too_many_new_sessions", TOO_MANY_REQUESTS,
        "`limits.new_sessions_per_minute` sessions were started in the last minute";
    NoRunningTurn = "no_running_turn", CONFLICT,
        "no turn is running in the session";
    TurnRunning = "turn_running", CONFLICT,
        "a turn is running in the session; wait for its reply or interrupt it";
    InvalidLastEventId = "invalid_last_event_id", UNPROCESSABLE_ENTITY,
        "`Last-Event-ID` is not a non-negative whole number";
    TooManyStreams = "too_many_streams", TOO_MANY_REQUESTS,
        "`limits.streams_per_owner` streams are open already";

    // Approvals.
    ApprovalNotFound = "approval_not_found", NOT_FOUND,
        "no such approval (or not the caller's)";
    AlreadyDecided = "already_decided", CONFLICT,
        "someone decided it first: their decision";
    ApprovalExpired = "approval_expired", GONE,
        "it can no longer be answered (expired or cancelled: its turn or process is gone)";
    InvalidDecision = "invalid_decision", UNPROCESSABLE_ENTITY,
        "`decision` is not `allow` or `deny`";
    AnswersRequired = "answers_required", UNPROCESSABLE_ENTITY,
        "a question needs `answers` (or `deny`)";
    InvalidRemember = "invalid_remember", UNPROCESSABLE_ENTITY,
        "`remember` is not `session`";
    InputRequired = "input_required", UNPROCESSABLE_ENTITY,
        "the tool's input was too large to keep; send `updatedInput`";
    InvalidInput = "invalid_input", UNPROCESSABLE_ENTITY,
        "the question's input is not an object";
    InvalidPermissionMode = "invalid_permission_mode", UNPROCESSABLE_ENTITY,
        "`mode` is not one of the CLI's modes";
    PermissionModeNotAllowed = "permission_mode_not_allowed", FORBIDDEN,
        "a user token may not choose that mode (`agent.permission_modes`)";

    // Devices, pushes, pairing and tokens.
    DeviceNotFound = "device_not_found", NOT_FOUND,
        "no such device (or not the caller's)";
    DeviceTokenTaken = "device_token_taken", CONFLICT,
        "another owner registered this token";
    InvalidDeviceToken = "invalid_device_token", UNPROCESSABLE_ENTITY,
        "`token` is not 64 to 200 hex digits";
    InvalidEnvironment = "invalid_environment", UNPROCESSABLE_ENTITY,
        "`environment` is not `sandbox` or `production`";
    InvalidTopic = "invalid_topic", UNPROCESSABLE_ENTITY,
        "`topic` is not a bundle id";
    TopicRequired = "topic_required", UNPROCESSABLE_ENTITY,
        "no `topic`, and the server has no `push.apns.topic`";
    InvalidName = "invalid_name", UNPROCESSABLE_ENTITY,
        "`name` is longer than 100 characters or holds control or text-direction characters";
    PushNotFound = "push_not_found", NOT_FOUND,
        "no such push";
    InvalidDevice = "invalid_device", UNPROCESSABLE_ENTITY,
        "`device` is neither an id nor a token";
    TokenNotFound = "token_not_found", NOT_FOUND,
        "no such token";
    InvalidDeviceName = "invalid_device_name", UNPROCESSABLE_ENTITY,
        "`deviceName` is longer than 100 characters or holds control or text-direction characters";
    TooManyPairingAttempts = "too_many_pairing_attempts", TOO_MANY_REQUESTS,
        "`auth.pairing_attempts_per_minute` wrong codes in the last minute from this address (an IPv6 address: from its /64), or any once everyone together has sent `auth.pairing_attempts_per_minute_total`";

    // Terminals.
    TerminalNotFound = "terminal_not_found", NOT_FOUND,
        "no such terminal (or not the caller's)";
    TerminalEnded = "terminal_ended", CONFLICT,
        "the terminal has ended";
    TerminalProgramNotAllowed = "terminal_program_not_allowed", FORBIDDEN,
        "the caller's role may not open this program (`terminals.programs`)";
    InvalidProgram = "invalid_program", UNPROCESSABLE_ENTITY,
        "`program` is not `claude` or `shell`, or a shell was asked for on a session";
    InvalidSize = "invalid_size", UNPROCESSABLE_ENTITY,
        "`cols` or `rows` is out of 1 to 1000, or the terminal refused the size";
    InputTooLarge = "input_too_large", PAYLOAD_TOO_LARGE,
        "the input is longer than `terminals.max_input_bytes`";
    InvalidControl = "invalid_control", UNPROCESSABLE_ENTITY,
        "a WebSocket control frame is neither a resize nor a known signal (sent in an error frame)";
    ConversationInTerminal = "conversation_in_terminal", CONFLICT,
        "the session's conversation is open in another terminal";
    TooManyTerminals = "too_many_terminals", TOO_MANY_REQUESTS,
        "`terminals.max` (or `terminals.max_per_owner`) terminals are running";
    TooManyViewers = "too_many_viewers", TOO_MANY_REQUESTS,
        "`terminals.max_viewers` viewers are attached";
    TerminalStartFailed = "terminal_start_failed", SERVICE_UNAVAILABLE,
        "the terminal's program could not be started";
    WebsocketRequired = "websocket_required", BAD_REQUEST,
        "the request is not a WebSocket upgrade";

    // The OpenAI-compatible `/v1`.
    ModelNotFound = "model_not_found", NOT_FOUND,
        "`model` is not one of the agents";
    InvalidMessages = "invalid_messages", UNPROCESSABLE_ENTITY,
        "no user message last, or its content is neither a string nor text parts";
    UnsupportedContent = "unsupported_content", UNPROCESSABLE_ENTITY,
        "a content part that is not text";
    TurnFailed = "turn_failed", BAD_GATEWAY,
        "the agent's turn failed";
    TurnInterrupted = "turn_interrupted", CONFLICT,
        "the turn was interrupted";
    TurnCancelled = "turn_cancelled", CONFLICT,
        "the message was cancelled before its turn";
    ReplyPending = "reply_pending", GATEWAY_TIMEOUT,
        "no reply within `server.wait_timeout`; it will be in the session's history";
}

impl ErrorCode {
    /// Codes no route lists: the fallbacks' (no route, or not its method), the WebSocket's
    /// error frames (not an HTTP answer), and `already_decided`, whose answer has a body of
    /// its own that its route's annotation documents.
    pub const UNLISTED: &'static [ErrorCode] = &[
        Self::RouteNotFound,
        Self::MethodNotAllowed,
        Self::InvalidControl,
        Self::AlreadyDecided,
    ];
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Every code: an error status, a meaning, a unique snake_case wire string. (That each
    /// but the unlisted is documented on a route is tested with the route table, in `http`.)
    #[test]
    fn every_code_is_whole() {
        let mut wires = HashSet::new();
        for &code in ErrorCode::ALL {
            let wire = code.as_str();
            assert!(
                code.status().is_client_error() || code.status().is_server_error(),
                "{wire}: {}",
                code.status()
            );
            assert!(!code.meaning().trim().is_empty(), "{wire}: no meaning");
            assert!(wires.insert(wire), "{wire} twice");
            assert!(
                !wire.is_empty()
                    && !wire.starts_with('_')
                    && wire
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{wire} is not snake_case"
            );
        }
    }

    #[test]
    fn codes_serialize_as_their_wire_strings() {
        assert_eq!(
            serde_json::to_value(ErrorCode::SessionNotFound).unwrap(),
            serde_json::json!("session_not_found")
        );
        assert_eq!(ErrorCode::QueueFull.status(), StatusCode::TOO_MANY_REQUESTS);
    }
}
