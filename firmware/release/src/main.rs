//! `strata-release`: makes the release key and signs agent releases.
//!
//! The private key stays in a 0600 file, never on the command line.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use strata_release::SigningKey;

/// Signs strata-agent releases with an ed25519 key.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make a new release key (PKCS#8, 0600); prints its public half, which
    /// agents are built with (STRATA_RELEASE_PUBKEY).
    Keygen {
        /// Where to write the private key (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the public half of a key.
    Public {
        /// The private key file.
        #[arg(long)]
        key: PathBuf,
    },
    /// Sign a binary as a release; prints the signature (hex).
    Sign {
        /// The private key file (0600).
        #[arg(long)]
        key: PathBuf,
        /// Release version.
        #[arg(long)]
        version: String,
        /// Target triple the binary is for (default: this tool's own).
        #[arg(long, default_value = strata_release::TARGET)]
        target: String,
        /// The strata-agent binary.
        #[arg(long)]
        binary: PathBuf,
    },
}

fn load(key: &PathBuf) -> anyhow::Result<SigningKey> {
    let mode = std::fs::metadata(key)
        .with_context(|| format!("reading {}", key.display()))?
        .permissions()
        .mode();
    anyhow::ensure!(
        mode & 0o077 == 0,
        "{} is readable by others; chmod 600 it",
        key.display()
    );
    SigningKey::from_pkcs8(&std::fs::read(key)?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen { out } => {
            let (key, pkcs8) = SigningKey::generate()?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .with_context(|| format!("creating {}", out.display()))?;
            std::io::Write::write_all(&mut f, &pkcs8)?;
            f.sync_all()?;
            println!("{}", key.public_hex());
        }
        Command::Public { key } => println!("{}", load(&key)?.public_hex()),
        Command::Sign {
            key,
            version,
            target,
            binary,
        } => {
            let key = load(&key)?;
            let f = std::fs::File::open(&binary)
                .with_context(|| format!("opening {}", binary.display()))?;
            let (digest, _) = strata_release::sha256_hex(f)?;
            println!("{}", key.sign(&version, &target, &digest)?);
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-release: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
