//! `swarmca`: a SwarmKit-compatible certificate authority.
//!
//! Wiring only: argument parsing, logging, and assembling the store, the CA server, the TLS
//! listener, the control socket and the node-side client from the library crates.

#![forbid(unsafe_code)]

mod admin_cli;
mod bench;
mod client;
mod ha;
mod serve;

/// mimalloc: the gRPC path allocates and frees many small buffers per call (h2 frames, TLS
/// records, protobuf messages); measured in `grpc/join_loopback` (benches/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

// Parsed once per process: the size of the largest variant (serve's flags) costs nothing.
#[allow(clippy::large_enum_variant)]
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
        /// An external CFSSL CA to sign through, when the cluster is created:
        /// `protocol=cfssl,url=https://HOST:PORT/api/v1/cfssl/sign[,cacert=ROOT.pem]`.
        /// Repeat for fallbacks (tried in order). Change later with `cluster update`.
        #[arg(long = "external-ca", value_parser = parse_external_ca)]
        external_ca: Vec<ExternalCaArg>,
        /// Use this root CA certificate (PEM file) instead of generating one, when the cluster
        /// is created. Without --ca-key, certificates are signed by the external CA only.
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        /// The private key of --ca-cert, for local signing: a PEM file, or a key held in a PKCS#11
        /// token named by its RFC 7512 URI (`pkcs11:token=LABEL;object=LABEL`, with
        /// --pkcs11-module).
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<PathBuf>,
        /// During a root rotation, how often the next batch of (at most 30) nodes is asked to
        /// renew.
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        rotation_interval: Duration,
        /// Share an etcd cluster (3.4+) with other managers instead of the embedded store:
        /// its client URLs, comma-separated. The first manager creates the cluster there;
        /// every manager serves; the one elected through etcd signs.
        #[arg(long, value_delimiter = ',')]
        etcd: Vec<String>,
        /// CA certificate (PEM) of the etcd servers (https:// URLs).
        #[arg(long, requires = "etcd")]
        etcd_cacert: Option<PathBuf>,
        /// Client certificate (PEM) for etcd's client-certificate authentication.
        #[arg(long, requires_all = ["etcd_cacert", "etcd_key"])]
        etcd_cert: Option<PathBuf>,
        /// Key (PEM) of --etcd-cert.
        #[arg(long, requires = "etcd_cert")]
        etcd_key: Option<PathBuf>,
        /// Key prefix of this swarm in etcd (several swarms can share one etcd).
        #[arg(long, default_value = "/swarmca/", requires = "etcd")]
        etcd_prefix: String,
        /// Lease of the leading manager: if it cannot renew it for this long (crash, pause,
        /// partition), another manager takes over.
        #[arg(long, default_value = "5s", value_parser = parse_duration, requires = "etcd")]
        leader_lease: Duration,
        /// With --etcd: the seal key file every manager of this swarm is given (the same file on
        /// each; make one with `swarmca seal-key generate`). The cluster's keys are sealed
        /// under it before they reach etcd. Without --etcd the data directory keeps its own.
        #[arg(long, requires = "etcd")]
        seal_key_file: Option<PathBuf>,
        /// The unlock key, for a manager of an autolocked cluster (read from this file; or set
        /// SWARMCA_UNLOCK_KEY). Without it such a manager starts locked and waits for
        /// `swarmca unlock`.
        #[arg(long)]
        unlock_key_file: Option<PathBuf>,
        /// A PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so) holding CA keys named by
        /// `pkcs11:` URIs (--ca-key, `ca --rotate --ca-key`). Its user PIN is read from
        /// --pkcs11-pin-file or SWARMCA_PKCS11_PIN, never from the command line.
        #[arg(long)]
        pkcs11_module: Option<PathBuf>,
        /// A file holding the PKCS#11 user PIN (mode 0600).
        #[arg(long, requires = "pkcs11_module")]
        pkcs11_pin_file: Option<PathBuf>,
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
    ///
    /// Also picks up the cluster's new root CA after a root rotation. With --if-needed (for a
    /// periodic job) it renews only when the CA asked this node to (root rotation), its role
    /// changed, or its certificate is past half of its validity.
    Renew {
        /// Directory holding swarm-node.crt, swarm-node.key and swarm-root-ca.crt.
        #[arg(long, default_value = "./swarm-certs")]
        cert_dir: PathBuf,
        /// Renew only when needed (see above); otherwise say so and exit 0.
        #[arg(long)]
        if_needed: bool,
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
    /// Print the cluster's root CA certificate, or rotate it.
    ///
    /// `--rotate` replaces the root without any node losing trust: the new root is
    /// cross-signed by the current one, nodes are asked (30 at a time) to renew, and once every
    /// node holds a certificate from the new root, the root is swapped and both join tokens are
    /// regenerated. Without -d, progress is shown until the rotation completes (Ctrl-C stops
    /// watching, not the rotation). Running `--rotate` again during a rotation restarts it
    /// towards the new root; `--abort` cancels it. A node that never renews blocks completion
    /// until it is removed with `swarmca node rm`.
    Ca {
        #[command(flatten)]
        data: DataDir,
        /// Start a root rotation; without --ca-cert a new root (and key) is generated.
        #[arg(long, conflicts_with_all = ["abort", "watch"])]
        rotate: bool,
        /// The new root CA certificate (PEM file), with --rotate.
        #[arg(long, requires = "rotate")]
        ca_cert: Option<PathBuf>,
        /// The new root's private key: a PEM file, or a `pkcs11:` URI of a key in the token the
        /// managers were started with (--pkcs11-module). Without it an --external-ca for the new
        /// root (cacert=...) must sign.
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<PathBuf>,
        /// Replace the external CA list in the same update (repeat for several):
        /// `protocol=cfssl,url=URL[,cacert=ROOT.pem]`.
        #[arg(long = "external-ca", value_parser = parse_external_ca, requires = "rotate")]
        external_ca: Vec<ExternalCaArg>,
        /// Validity of node certificates issued from now on (minimum 1h), with --rotate.
        #[arg(long, value_parser = parse_expiry, requires = "rotate")]
        cert_expiry: Option<Duration>,
        /// Abort the rotation in progress; the cluster keeps its current root.
        #[arg(long, conflicts_with = "watch")]
        abort: bool,
        /// Follow the progress of the rotation in progress until it completes.
        #[arg(long)]
        watch: bool,
        /// Do not wait for the rotation to complete.
        #[arg(short, long)]
        detach: bool,
        /// Print the PEM only (no progress output).
        #[arg(short, long)]
        quiet: bool,
    },
    /// Manage cluster settings.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Load-test a manager: concurrent clients join, renew or fetch the root over TLS; shows
    /// progress and prints requests/s, latency percentiles and errors by gRPC code.
    ///
    /// `join` creates a node per request (remove them afterwards); `renew` joins one node per
    /// client first (not measured) and renews it repeatedly; `root` needs no token.
    Bench {
        /// What each request does.
        #[arg(value_enum)]
        kind: bench::BenchKind,
        /// A join token (worker or manager), for `join` and `renew`.
        #[arg(long)]
        token: Option<String>,
        /// Concurrent clients, each on its own TLS connection.
        #[arg(short = 'c', long, default_value_t = 16)]
        clients: usize,
        /// Stop after this many requests.
        #[arg(short = 'n', long, default_value_t = 1000)]
        requests: u64,
        /// Stop after this long, whatever -n says.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: Duration,
        /// Address of a manager, host:port.
        addr: String,
    },
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
    /// Unlock a manager that started locked (autolock on) by giving it the unlock key.
    ///
    /// The key is read from --key-file, or from standard input when that is not a terminal, or
    /// asked for without echo. A wrong key is refused, and each wrong key in a row makes the
    /// next answer wait longer (up to 30 s).
    Unlock {
        #[command(flatten)]
        data: DataDir,
        /// A file holding the unlock key.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Make a seal key: the secret that wraps the cluster's data key while autolock is off.
    ///
    /// The embedded store makes its own (DATA_DIR/seal.key). Managers sharing etcd are each given
    /// the same file with `serve --seal-key-file`; keep it apart from etcd's data and backups.
    SealKey {
        #[command(subcommand)]
        action: SealKeyAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum SealKeyAction {
    /// Write a new random seal key to FILE (mode 0600; refuses to overwrite), or print it to
    /// stdout when FILE is omitted.
    Generate {
        /// Where to write it.
        file: Option<PathBuf>,
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
        /// Replace the external CA list (repeat for several):
        /// `protocol=cfssl,url=URL[,cacert=ROOT.pem]`.
        #[arg(long = "external-ca", value_parser = parse_external_ca)]
        external_ca: Vec<ExternalCaArg>,
        /// Remove every external CA (sign locally again, if the root key is present).
        #[arg(long, conflicts_with = "external_ca")]
        clear_external_ca: bool,
    },
    /// Show cluster settings.
    Inspect {
        #[command(flatten)]
        data: DataDir,
    },
}

/// One `--external-ca` value.
#[derive(Debug, Clone)]
pub struct ExternalCaArg {
    /// The CFSSL sign URL.
    pub url: String,
    /// File holding the root this CA signs for.
    pub cacert: Option<PathBuf>,
}

impl ExternalCaArg {
    /// The admin API form, reading the cacert file.
    pub fn to_spec(&self) -> Result<swarmca_proto::admin::ExternalCaSpec, Fatal> {
        let ca_cert = match &self.cacert {
            Some(p) => std::fs::read(p).map_err(|e| fatal!("cannot read {}: {e}", p.display()))?,
            None => Vec::new(),
        };
        Ok(swarmca_proto::admin::ExternalCaSpec { url: self.url.clone(), ca_cert })
    }
}

fn parse_external_ca(s: &str) -> Result<ExternalCaArg, String> {
    let mut protocol = None;
    let mut url = None;
    let mut cacert = None;
    for part in s.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            format!("expected key=value in {part:?} (protocol=cfssl,url=URL[,cacert=FILE])")
        })?;
        match k.trim().to_ascii_lowercase().as_str() {
            "protocol" => protocol = Some(v.trim().to_ascii_lowercase()),
            "url" => url = Some(v.trim().to_string()),
            "cacert" => cacert = Some(PathBuf::from(v.trim())),
            other => return Err(format!("unknown external CA option {other:?}")),
        }
    }
    match protocol.as_deref() {
        Some("cfssl") | None => {}
        Some(p) => return Err(format!("unsupported external CA protocol {p:?} (only cfssl)")),
    }
    let url = url.ok_or("missing url=")?;
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(format!("external CA URL must start with https:// or http://: {url:?}"));
    }
    Ok(ExternalCaArg { url, cacert })
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

/// `swarmca seal-key generate [FILE]`.
fn seal_key_generate(file: Option<&std::path::Path>) -> Result<(), Fatal> {
    let key = swarmca_core::seal::SealKey::generate(&mut swarmca_server::OsEntropy)?;
    let Some(path) = file else {
        print!("{}", key.to_text().as_str());
        return Ok(());
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(|e| fatal!("cannot create {}: {e}", path.display()))?;
    std::io::Write::write_all(&mut f, key.to_text().as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| fatal!("cannot write {}: {e}", path.display()))?;
    eprintln!(
        "Seal key written to {} (mode 0600). Give the same file to every manager with --seal-key-file.",
        path.display()
    );
    Ok(())
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
        Command::Serve {
            data,
            listen,
            cert_expiry,
            external_ca,
            ca_cert,
            ca_key,
            rotation_interval,
            etcd,
            etcd_cacert,
            etcd_cert,
            etcd_key,
            etcd_prefix,
            leader_lease,
            seal_key_file,
            unlock_key_file,
            pkcs11_module,
            pkcs11_pin_file,
        } => {
            let init = serve::InitOptions {
                cert_expiry,
                external_ca,
                ca_cert,
                ca_key,
                pkcs11_module,
                pkcs11_pin_file,
            };
            let etcd = (!etcd.is_empty()).then_some(ha::EtcdArgs {
                endpoints: etcd,
                cacert: etcd_cacert,
                cert: etcd_cert,
                key: etcd_key,
                prefix: etcd_prefix,
                lease: leader_lease,
                seal_key_file,
            });
            serve::serve(&data.path, listen, init, rotation_interval, etcd, unlock_key_file.as_deref()).await
        }
        Command::Join { token, cert_dir, timeout, addr } => {
            client::join(&addr, &token, &cert_dir, timeout).await
        }
        Command::Renew { cert_dir, if_needed, timeout, addr } => {
            client::renew(&addr, &cert_dir, timeout, if_needed).await
        }
        Command::JoinToken { data, rotate, quiet, role } => {
            admin_cli::join_token(&data.path, role, rotate, quiet).await
        }
        Command::Node(cmd) => admin_cli::node(cmd).await,
        Command::Ca {
            data,
            rotate,
            ca_cert,
            ca_key,
            external_ca,
            cert_expiry,
            abort,
            watch,
            detach,
            quiet,
        } => {
            let action = if rotate {
                admin_cli::CaAction::Rotate { ca_cert, ca_key, external_ca, cert_expiry }
            } else if abort {
                admin_cli::CaAction::Abort
            } else if watch {
                admin_cli::CaAction::Watch
            } else {
                admin_cli::CaAction::Show
            };
            admin_cli::ca(&data.path, action, detach, quiet).await
        }
        Command::Cluster(cmd) => admin_cli::cluster(cmd).await,
        Command::Bench { kind, token, clients, requests, duration, addr } => {
            bench::run(bench::BenchArgs { kind, addr, token, clients, requests, duration }).await
        }
        Command::UnlockKey { data, rotate, quiet } => admin_cli::unlock_key(&data.path, rotate, quiet).await,
        Command::SealKey { action: SealKeyAction::Generate { file } } => seal_key_generate(file.as_deref()),
        Command::Unlock { data, key_file } => admin_cli::unlock(&data.path, key_file.as_deref()).await,
    }
}
