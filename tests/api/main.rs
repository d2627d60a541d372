//! Integration tests: the real server on port 0, a real SQLite file, real HTTP, and a real
//! child process speaking the Claude stream-json protocol (the fake CLI, or the real one).

mod approvals;
mod chat;
mod cli;
mod faults;
mod helpers;
#[path = "../kit/mod.rs"]
mod kit;
mod lifecycle;
mod listener;
mod live_text;
mod load;
mod openai;
mod openapi;
mod pairing;
mod permission_protocol;
mod push;
mod real_claude;
mod recovery;
mod resilience;
mod retention;
mod security;
mod sessions;
mod spares;
mod stand_in_api;
mod terminals;
mod tls;
mod tokens;
