//! `strata-relay`: the relay server's command line.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use strata_relay::auth::{check_password_strength, hash_password};
use strata_relay::config::{BrokerMode, Config};
use strata_relay::datadir::DataDir;
use strata_relay::store::accounts::{self, Role, normalize_email};
use strata_relay::{db, web};

/// Strata relay: accounts, organizations, the dashboard and its API.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (every key may be overridden by STRATA_RELAY_<KEY>).
    #[arg(long, global = true, env = "STRATA_RELAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTPS (creates the data directory, database, keys and a self-signed certificate on first start).
    Serve,
    /// Write the files an external mosquitto needs to serve devices (for
    /// `broker = "external"`; listens on `external_broker`).
    MosquittoConfig {
        /// Directory for mosquitto.conf, ca.pem, server.pem, server.key and
        /// dynamic-security.json (an existing dynamic-security.json is kept:
        /// mosquitto stores its state there).
        #[arg(long)]
        out: PathBuf,
        /// The dynamic-security plugin (default: where Debian or Fedora installs it).
        #[arg(long)]
        plugin: Option<PathBuf>,
    },
    /// Manage the agent releases devices can be updated to.
    Release {
        #[command(subcommand)]
        command: ReleaseCommand,
    },
    /// Manage user accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Subcommand)]
enum ReleaseCommand {
    /// Add a release signed with `strata-release sign` (the relay stores the
    /// signature; devices check it).
    Add {
        /// Release version.
        #[arg(long)]
        version: String,
        /// Target triple of the binary (aarch64-unknown-linux-gnu, ...).
        #[arg(long)]
        target: String,
        /// The strata-agent binary.
        #[arg(long)]
        binary: PathBuf,
        /// The signature `strata-release sign` printed (hex).
        #[arg(long)]
        signature: String,
    },
    /// List the releases.
    List,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account that owns a new organization. The password is read
    /// from the terminal (asked twice) or from the first line of standard input.
    Add {
        /// Login email.
        #[arg(long)]
        email: String,
        /// Name of the organization to create (default: the email's domain).
        #[arg(long)]
        org: Option<String>,
    },
}

fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let a = rpassword::prompt_password("Password: ")?;
        let b = rpassword::prompt_password("Again: ")?;
        anyhow::ensure!(a == b, "the passwords differ");
        Ok(a)
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }
}

async fn user_add(config: Config, email: &str, org: Option<String>) -> anyhow::Result<()> {
    let email = normalize_email(email).context("that is not an email address")?;
    let password = read_password()?;
    check_password_strength(&password).map_err(|e| anyhow::anyhow!(e))?;
    DataDir::open_or_create(&config.data_dir, &config.public_host())?;
    let pool = db::connect(&config.database_url()).await?;
    let org_name = org.unwrap_or_else(|| {
        email
            .split_once('@')
            .map(|(_, d)| d.to_string())
            .unwrap_or_default()
    });
    anyhow::ensure!(
        !org_name.trim().is_empty() && org_name.chars().count() <= 64,
        "the organization needs a name of 1 to 64 characters"
    );
    let hash = hash_password(&password);
    let user = match accounts::create_user(&pool, &email, &hash).await {
        Err(e) if db::is_unique_violation(&e) => {
            anyhow::bail!("an account with email {email} already exists")
        }
        r => r?,
    };
    let org = accounts::create_org(&pool, org_name.trim()).await?;
    accounts::add_member(&pool, &org.id, &user.id, Role::Owner).await?;
    println!("created {email}, owner of \"{}\" ({})", org.name, org.id);
    Ok(())
}

async fn mosquitto_config(
    config: Config,
    out: PathBuf,
    plugin: Option<PathBuf>,
) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    use strata_relay::broker::mosquitto;
    anyhow::ensure!(
        config.broker == BrokerMode::External,
        "set broker = \"external\" and external_broker = \"host:port\" first"
    );
    let (host, port) = config.external_broker_addr()?;
    let plugin = plugin
        .or_else(mosquitto::find_dynsec_plugin)
        .context("mosquitto_dynamic_security.so not found; pass --plugin")?;
    let (state, _) = web::state(config).await?;
    let crl = mosquitto::crl_path(&state.config);
    mosquitto::write_crl(&state.ca, &state.db, &crl).await?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize()?;
    let devices = strata_relay::store::devices::active(&state.db).await?;
    let files = mosquitto::files(
        &state.ca,
        &devices,
        &web::broker_names(&state.config),
        (&host, port),
        &out,
        &crl,
        &plugin,
    )?;
    std::fs::write(out.join("mosquitto.conf"), &files.conf)?;
    std::fs::write(out.join("ca.pem"), state.ca.ca_pem())?;
    std::fs::write(out.join("server.pem"), &files.cert_pem)?;
    let key = out.join("server.key");
    let _ = std::fs::remove_file(&key);
    std::io::Write::write_all(
        &mut std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)?,
        files.key_pem.as_bytes(),
    )?;
    let dynsec = out.join("dynamic-security.json");
    if !dynsec.exists() {
        std::fs::write(&dynsec, &files.dynsec)?;
    }
    println!(
        "wrote {}/mosquitto.conf; run: mosquitto -c {}/mosquitto.conf",
        out.display(),
        out.display()
    );
    Ok(())
}

fn release(config: Config, command: ReleaseCommand) -> anyhow::Result<()> {
    use strata_relay::releases;
    DataDir::open_or_create(&config.data_dir, &config.public_host())?;
    match command {
        ReleaseCommand::Add {
            version,
            target,
            binary,
            signature,
        } => {
            let r = releases::add(&config.data_dir, &version, &target, &binary, &signature)?;
            println!(
                "added {} for {} ({} bytes, sha256 {})",
                r.version, r.target, r.size, r.sha256
            );
        }
        ReleaseCommand::List => {
            for r in releases::list(&config.data_dir) {
                println!("{}\t{}\t{}\t{}", r.target, r.version, r.size, r.sha256);
            }
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,tower_http=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let run = || -> anyhow::Result<()> {
        let config = Config::load(cli.config.as_deref())?;
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(async {
            match cli.command {
                Command::Serve => web::serve(config).await,
                Command::Release { command } => release(config, command),
                Command::MosquittoConfig { out, plugin } => {
                    mosquitto_config(config, out, plugin).await
                }
                Command::User {
                    command: UserCommand::Add { email, org },
                } => user_add(config, &email, org).await,
            }
        })
    };
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-relay: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
