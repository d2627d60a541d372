//! The `tether` binary: parse the command line and hand over to the library.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tether::cli::run(tether::cli::Cli::parse()).await
}
