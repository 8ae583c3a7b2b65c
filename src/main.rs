//! The `devcell` executable: parse the command line, install the TLS crypto provider, run.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // One process-wide rustls provider, chosen before anything builds a TLS config.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = devcell::cli::Cli::parse();
    match devcell::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
