//! The command line: `tether serve` and `tether token`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::{
    auth::{Auth, Role, ADMIN_OWNER},
    config::Settings,
    telemetry, Application,
};

#[derive(Parser)]
#[command(
    name = "tether",
    version,
    about = "Keeps AI coding CLI sessions alive for your phone"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// A TOML file whose keys override the embedded defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print an API token signed with this server's secret.
    Token {
        #[arg(long)]
        config: Option<PathBuf>,
        /// A token that sees and manages every session.
        #[arg(long)]
        admin: bool,
        /// The owner the token speaks for (ignored with --admin); not the admin's name.
        #[arg(long, default_value = "me")]
        user: String,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => serve(config).await,
        Command::Token {
            config,
            admin,
            user,
        } => {
            let settings = Settings::load(config.as_deref()).context("loading settings")?;
            let auth = Auth::from_settings(&settings)?;
            let token = if admin {
                auth.issue(ADMIN_OWNER, Role::Admin)?
            } else {
                auth.issue(&user, Role::User)?
            };
            println!("{token}");
            Ok(())
        }
    }
}

async fn serve(config: Option<PathBuf>) -> anyhow::Result<()> {
    let settings = Settings::load(config.as_deref()).context("loading settings")?;
    telemetry::init(&settings.log);
    let app = Application::build(settings).await?;
    // The one line a script reads to learn the port (useful with port 0).
    println!("tether listening on http://{}", app.local_addr());
    app.run_until(shutdown_signal()).await
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
