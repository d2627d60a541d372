//! tether: keeps AI coding CLI sessions alive for a developer's phone.

pub mod agent;
pub mod app;
pub mod auth;
pub mod awake;
pub mod cli;
pub mod config;
pub mod datadir;
pub mod faults;
pub mod http;
pub mod pairing;
pub mod push;
pub mod refusal;
pub mod sessions;
pub mod store;
pub mod telemetry;
pub mod terminals;
pub mod tls;

pub use app::Application;
pub use http::AppState;
