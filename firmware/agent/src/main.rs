//! `strata-agent`: see the library docs.

use std::path::PathBuf;

use clap::Parser;

/// The Strata device daemon: enrolls the device by QR code, keeps the
/// control channel to the relay, and streams over every link on command.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short,
        default_value = "/etc/strata/agent.toml",
        env = "STRATA_AGENT_CONFIG"
    )]
    config: PathBuf,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let cfg = match strata_agent::config::AgentConfig::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("strata-agent: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Which binary runs: a release being tried, the installed one, or this one.
    match strata_agent::update::launcher::launch(&cfg) {
        strata_agent::update::launcher::Launch::RunHere => {}
        strata_agent::update::launcher::Launch::Exit(code) => {
            return std::process::ExitCode::from(code);
        }
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("strata-agent: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("stopping");
        };
        strata_agent::run(cfg, strata_agent::Hooks::default(), shutdown).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("strata-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
