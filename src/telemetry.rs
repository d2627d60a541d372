//! Logging: a tracing subscriber on stderr, text or JSON, filtered by `RUST_LOG` or
//! `log.filter`.

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogSettings;

pub fn init(settings: &LogSettings) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.filter));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if settings.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
