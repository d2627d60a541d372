//! The command line: `tether serve`, `tether token`, `tether tokens`, `tether secret`,
//! `tether pair` and `tether sessions`.

mod client;
mod pair;
mod sessions;
mod tokens;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::{config::Settings, telemetry, Application};

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
    /// List the API tokens (`revoke ID` to revoke one).
    Tokens {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<TokensAction>,
    },
    /// The secret that signs tokens (`rotate` to replace it).
    Secret {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: SecretAction,
    },
    /// Pair a phone: print a one-time code and its QR code for the tether app.
    Pair {
        #[arg(long)]
        config: Option<PathBuf>,
        /// What to call the phone (it may send its own name instead).
        #[arg(long)]
        name: Option<String>,
        /// The owner the phone's token speaks for.
        #[arg(long, default_value = "me")]
        owner: String,
        /// The server's address as the phone reaches it (default: the running server's).
        #[arg(long)]
        url: Option<String>,
        /// Print only {code, url, fingerprint, expiresAt, link} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the live sessions of the server running on this configuration's data folder.
    Sessions {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the server's JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TokensAction {
    /// Revoke a token: it is refused from its next request, its open streams and terminal
    /// WebSockets end, and its phone gets no pushes.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum SecretAction {
    /// Make a new secret (data/auth.secret) and revoke every earlier token, for the day the
    /// secret leaked: phones pair again. Not with `auth.secret` configured (change it there).
    Rotate,
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
            tokens::token(&settings, admin, &user).await
        }
        Command::Tokens {
            config,
            json,
            action,
        } => {
            let settings = Settings::load(config.as_deref()).context("loading settings")?;
            match action {
                None => tokens::list(&settings, json).await,
                Some(TokensAction::Revoke { id }) => tokens::revoke(&settings, &id).await,
            }
        }
        Command::Secret { config, action } => {
            let settings = Settings::load(config.as_deref()).context("loading settings")?;
            match action {
                SecretAction::Rotate => tokens::rotate_secret(&settings).await,
            }
        }
        Command::Pair {
            config,
            name,
            owner,
            url,
            json,
        } => {
            let settings = Settings::load(config.as_deref()).context("loading settings")?;
            tokens::pair(&settings, name.as_deref(), &owner, url, json).await
        }
        Command::Sessions { config, json } => {
            let settings = Settings::load(config.as_deref()).context("loading settings")?;
            sessions::run(&settings, json).await
        }
    }
}

async fn serve(config: Option<PathBuf>) -> anyhow::Result<()> {
    let settings = Settings::load(config.as_deref()).context("loading settings")?;
    telemetry::init(&settings.log);
    let app = Application::build(settings).await?;
    // The first line is the one a script reads to learn the port (useful with port 0); the
    // fingerprint follows, for whoever pins the certificate.
    println!("tether listening on {}", app.base_url());
    if let Some(fingerprint) = &app.state().tls_fingerprint {
        println!("tls fingerprint sha256 {fingerprint}");
    }
    app.run_until(shutdown_signal()).await
}

/// The first Ctrl-C or SIGTERM: a graceful shutdown (within `server.shutdown_grace`).
/// A second one while that runs stops the process at once, for a shutdown that hangs.
async fn shutdown_signal() {
    let mut signals = match Signals::new() {
        Ok(signals) => signals,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for signals; stop tether with SIGKILL");
            return std::future::pending().await;
        }
    };
    let first = signals.next().await;
    tracing::info!(
        signal = first.name,
        "stopping gracefully; send it again to stop at once"
    );
    tokio::spawn(async move {
        let second = signals.next().await;
        tracing::warn!(
            signal = second.name,
            "second signal: exiting now without finishing the shutdown"
        );
        std::process::exit(second.exit_code);
    });
}

/// A signal that stops tether, with the exit code a shell gives a process it killed.
struct Received {
    name: &'static str,
    exit_code: i32,
}

/// Ctrl-C and SIGTERM, listened to from start to exit (a second one is never missed).
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    #[cfg(not(unix))]
    fn new() -> std::io::Result<Self> {
        Ok(Self {})
    }

    #[cfg(unix)]
    async fn next(&mut self) -> Received {
        tokio::select! {
            _ = self.interrupt.recv() => Received { name: "SIGINT", exit_code: 130 },
            _ = self.terminate.recv() => Received { name: "SIGTERM", exit_code: 143 },
        }
    }

    #[cfg(not(unix))]
    async fn next(&mut self) -> Received {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        Received {
            name: "Ctrl-C",
            exit_code: 130,
        }
    }
}
