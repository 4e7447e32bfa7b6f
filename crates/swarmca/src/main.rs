//! `swarmca`: a SwarmKit-compatible certificate authority.
//!
//! Wiring only: argument parsing, logging, and assembling the store, the CA server, the TLS
//! listener, the control socket and the node-side client from the library crates.

#![forbid(unsafe_code)]

mod admin_cli;
mod client;
mod files;
mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Default data directory of `serve` and the admin commands.
pub const DEFAULT_DATA_DIR: &str = "./swarmca-data";

/// A SwarmKit-compatible certificate authority: serves the docker.swarmkit.v1 CA and NodeCA
/// gRPC services so that swarm nodes can join with a token and renew with their certificate.
#[derive(Debug, Parser)]
#[command(name = "swarmca", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Where the manager keeps its state.
#[derive(Debug, Clone, Args)]
pub struct DataDir {
    /// Data directory of the manager (store, certificates, control socket).
    #[arg(long = "data-dir", default_value = DEFAULT_DATA_DIR)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Worker,
    Manager,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the CA manager: create the cluster on first start (or reopen it), serve the CA and
    /// NodeCA gRPC services over TLS, and the admin API on DATA_DIR/control.sock.
    Serve {
        #[command(flatten)]
        data: DataDir,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:2377")]
        listen: SocketAddr,
        /// Validity of issued node certificates when the cluster is created (minimum 1h),
        /// e.g. 2160h, 30d. Change it later with `swarmca cluster update --cert-expiry`.
        #[arg(long, value_parser = parse_expiry)]
        cert_expiry: Option<Duration>,
    },
    /// Join a swarm: fetch and verify the root CA against the token, send a CSR, wait for the
    /// certificate, and write swarm-node.crt, swarm-node.key and swarm-root-ca.crt.
    Join {
        /// The worker or manager join token (SWMTKN-...).
        #[arg(long)]
        token: String,
        /// Where to write the certificates.
        #[arg(long, default_value = "./swarm-certs")]
        cert_dir: PathBuf,
        /// Give up waiting for the certificate after this long.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
        /// Address of a manager, host:port.
        addr: String,
    },
    /// Renew this node's certificate over mTLS (no token), replacing the files in CERT_DIR.
    Renew {
        /// Directory holding swarm-node.crt, swarm-node.key and swarm-root-ca.crt.
        #[arg(long, default_value = "./swarm-certs")]
        cert_dir: PathBuf,
        /// Give up waiting for the certificate after this long.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
        /// Address of a manager, host:port.
        addr: String,
    },
    /// Print (or rotate) a join token.
    JoinToken {
        #[command(flatten)]
        data: DataDir,
        /// Generate a new token first; the old one stops working.
        #[arg(long)]
        rotate: bool,
        /// Print the token only.
        #[arg(short, long)]
        quiet: bool,
        /// Which token.
        #[arg(value_enum)]
        role: RoleArg,
    },
    /// Manage nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Print the cluster's root CA certificate.
    Ca {
        #[command(flatten)]
        data: DataDir,
        /// Print the PEM only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Manage cluster settings.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Print (or rotate) the manager unlock key (autolock).
    UnlockKey {
        #[command(flatten)]
        data: DataDir,
        /// Generate a new key first.
        #[arg(long)]
        rotate: bool,
        /// Print the key only.
        #[arg(short, long)]
        quiet: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes.
    Ls {
        #[command(flatten)]
        data: DataDir,
        /// Print node IDs only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show one node, with its certificate.
    Inspect {
        #[command(flatten)]
        data: DataDir,
        id: String,
    },
    /// Remove a node; its certificates are blacklisted until they expire.
    Rm {
        #[command(flatten)]
        data: DataDir,
        /// Also remove managers.
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Make a node a manager (effective at its next renewal).
    Promote {
        #[command(flatten)]
        data: DataDir,
        id: String,
    },
    /// Make a node a worker (effective at its next renewal).
    Demote {
        #[command(flatten)]
        data: DataDir,
        id: String,
    },
    /// Accept a node whose membership is pending.
    Accept {
        #[command(flatten)]
        data: DataDir,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Change cluster settings.
    Update {
        #[command(flatten)]
        data: DataDir,
        /// Validity of node certificates issued from now on (minimum 1h).
        #[arg(long, value_parser = parse_expiry)]
        cert_expiry: Option<Duration>,
        /// Require the unlock key to restart managers (true/false).
        #[arg(long)]
        autolock: Option<bool>,
    },
    /// Show cluster settings.
    Inspect {
        #[command(flatten)]
        data: DataDir,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

fn parse_expiry(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(3600) {
        return Err(format!("minimum certificate expiry time is 1h, got {s}"));
    }
    Ok(d)
}

/// A failure to report on one line, then exit non-zero.
#[derive(Debug)]
pub struct Fatal(pub String);

impl<E: std::fmt::Display> From<E> for Fatal {
    fn from(e: E) -> Fatal {
        Fatal(e.to_string())
    }
}

/// Shorthand for `Err(Fatal(..))`.
#[macro_export]
macro_rules! fatal {
    ($($t:tt)*) => { $crate::Fatal(format!($($t)*)) };
}

fn init_logging(verbose: u8, format: LogFormat) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet_logs = !matches!(cli.command, Command::Serve { .. });
    if !quiet_logs || cli.verbose > 0 {
        init_logging(cli.verbose, cli.log_format);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("swarmca: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(dispatch(cli.command));
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal(msg)) => {
            eprintln!("swarmca: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Command) -> Result<(), Fatal> {
    match cmd {
        Command::Serve { data, listen, cert_expiry } => serve::serve(&data.path, listen, cert_expiry).await,
        Command::Join { token, cert_dir, timeout, addr } => {
            client::join(&addr, &token, &cert_dir, timeout).await
        }
        Command::Renew { cert_dir, timeout, addr } => client::renew(&addr, &cert_dir, timeout).await,
        Command::JoinToken { data, rotate, quiet, role } => {
            admin_cli::join_token(&data.path, role, rotate, quiet).await
        }
        Command::Node(cmd) => admin_cli::node(cmd).await,
        Command::Ca { data, quiet } => admin_cli::ca(&data.path, quiet).await,
        Command::Cluster(cmd) => admin_cli::cluster(cmd).await,
        Command::UnlockKey { data, rotate, quiet } => {
            admin_cli::unlock_key(&data.path, rotate, quiet).await
        }
    }
}
