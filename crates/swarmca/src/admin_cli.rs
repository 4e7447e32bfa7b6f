//! The admin commands: talk to a running manager over DATA_DIR/control.sock.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper_util::rt::TokioIo;
use swarmca_proto::admin::admin_client::AdminClient;
use swarmca_proto::admin::{self, NodeInfo};
use tonic::transport::{Channel, Endpoint};

use crate::{fatal, ClusterCommand, ExternalCaArg, Fatal, NodeCommand, RoleArg};

/// The control socket of a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

async fn client(data_dir: &Path) -> Result<AdminClient<Channel>, Fatal> {
    let path = socket_path(data_dir);
    let p = path.clone();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let p = p.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?)) }
    });
    let ch = Endpoint::from_static("http://swarmca.control")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(connector)
        .await
        .map_err(|e| {
            fatal!(
                "no swarmca server is running for data dir {} (cannot connect to {}: {}); start one with `swarmca serve --data-dir {}`",
                data_dir.display(),
                path.display(),
                root_cause(&e),
                data_dir.display()
            )
        })?;
    Ok(AdminClient::new(ch))
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn rpc_err(s: tonic::Status) -> Fatal {
    fatal!("{}", s.message())
}

fn proto_role(r: RoleArg) -> i32 {
    match r {
        RoleArg::Worker => admin::Role::Worker as i32,
        RoleArg::Manager => admin::Role::Manager as i32,
    }
}

fn role_name(r: i32) -> &'static str {
    if r == admin::Role::Manager as i32 {
        "manager"
    } else {
        "worker"
    }
}

/// `swarmca join-token`.
pub async fn join_token(data_dir: &Path, role: RoleArg, rotate: bool, quiet: bool) -> Result<(), Fatal> {
    let mut c = client(data_dir).await?;
    let r = c
        .join_token(admin::JoinTokenRequest { role: proto_role(role), rotate })
        .await
        .map_err(rpc_err)?
        .into_inner();
    if quiet {
        println!("{}", r.token);
        return Ok(());
    }
    let name = role_name(proto_role(role));
    if rotate {
        println!("Successfully rotated {name} join token.\n");
    }
    println!("To add a {name} to this swarm, run the following command:\n");
    println!("    swarmca join --token {} <manager address>", r.token);
    Ok(())
}

/// `swarmca node ...`.
pub async fn node(cmd: NodeCommand) -> Result<(), Fatal> {
    match cmd {
        NodeCommand::Ls { data, quiet } => {
            let mut c = client(&data.path).await?;
            let nodes = c.list_nodes(admin::ListNodesRequest {}).await.map_err(rpc_err)?.into_inner().nodes;
            if quiet {
                for n in nodes {
                    println!("{}", n.id);
                }
            } else {
                print_table(&nodes);
            }
            Ok(())
        }
        NodeCommand::Inspect { data, id } => {
            let mut c = client(&data.path).await?;
            let n = c.inspect_node(admin::NodeRequest { node_id: id }).await.map_err(rpc_err)?.into_inner();
            print_node(&n);
            Ok(())
        }
        NodeCommand::Rm { data, force, id } => {
            let mut c = client(&data.path).await?;
            let n = c
                .remove_node(admin::RemoveNodeRequest { node_id: id, force })
                .await
                .map_err(rpc_err)?
                .into_inner();
            println!("{}", n.id);
            eprintln!("node removed; its certificates are refused from now on");
            Ok(())
        }
        NodeCommand::Promote { data, id } => role_change(&data.path, id, true).await,
        NodeCommand::Demote { data, id } => role_change(&data.path, id, false).await,
        NodeCommand::Accept { data, id } => {
            let mut c = client(&data.path).await?;
            let n = c.accept_node(admin::NodeRequest { node_id: id }).await.map_err(rpc_err)?.into_inner();
            println!("Node {} accepted.", n.id);
            Ok(())
        }
    }
}

async fn role_change(data_dir: &Path, id: String, promote: bool) -> Result<(), Fatal> {
    let mut c = client(data_dir).await?;
    let req = admin::NodeRequest { node_id: id };
    let n = if promote { c.promote_node(req).await } else { c.demote_node(req).await }
        .map_err(rpc_err)?
        .into_inner();
    println!(
        "Node {} is now a {} (its certificate changes at its next renewal: `swarmca renew`).",
        n.id,
        role_name(n.role)
    );
    Ok(())
}

fn fmt_time(unix: i64) -> String {
    match u64::try_from(unix) {
        Ok(s) if s > 0 => humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s)).to_string(),
        _ => "-".into(),
    }
}

fn fmt_remaining(unix: i64) -> String {
    let Ok(s) = u64::try_from(unix) else { return "-".into() };
    if s == 0 {
        return "-".into();
    }
    let at = UNIX_EPOCH + Duration::from_secs(s);
    match at.duration_since(SystemTime::now()) {
        Ok(d) => {
            let (days, hours, mins) = (d.as_secs() / 86_400, d.as_secs() / 3600 % 24, d.as_secs() / 60 % 60);
            if days > 0 {
                format!("in {days}d{hours}h")
            } else {
                format!("in {hours}h{mins}m")
            }
        }
        Err(_) => "EXPIRED".into(),
    }
}

fn print_table(nodes: &[NodeInfo]) {
    println!(
        "{:<27} {:<8} {:<9} {:<8} {:<14} {:<8} {:<7} DETAIL",
        "ID", "ROLE", "MEMBER", "CERT", "EXPIRES", "ISSUER", "MANAGER"
    );
    for n in nodes {
        let id = if n.is_self { format!("{} *", n.id) } else { n.id.clone() };
        let mut role = role_name(n.role).to_string();
        if n.desired_role != n.role {
            role.push_str(&format!("->{}", role_name(n.desired_role)));
        }
        println!(
            "{:<27} {:<8} {:<9} {:<8} {:<14} {:<8} {:<7} {}",
            id,
            role,
            n.membership,
            n.state,
            fmt_remaining(n.not_after),
            n.issuer_state,
            if n.is_leader { "leader" } else { "" },
            n.detail.lines().next().unwrap_or("")
        );
    }
}

fn print_node(n: &NodeInfo) {
    println!(
        "ID:              {}{}{}",
        n.id,
        if n.is_self { " (this manager)" } else { "" },
        if n.is_leader { " (leader)" } else { "" }
    );
    println!("Role:            {}", role_name(n.role));
    println!("Desired role:    {}", role_name(n.desired_role));
    println!("Membership:      {}", n.membership);
    println!("Availability:    {}", n.availability);
    println!("Certificate:     {}", n.state);
    if !n.detail.is_empty() {
        println!("Detail:          {}", n.detail);
    }
    println!("  Issuer:        {}", if n.issuer.is_empty() { "-" } else { &n.issuer });
    println!("  Reported:      {} (the issuer the node last authenticated or fetched with)", n.issuer_state);
    println!("  Not before:    {}", fmt_time(n.not_before));
    println!("  Not after:     {}", fmt_time(n.not_after));
    println!("  Fingerprint:   {}", if n.cert_fingerprint.is_empty() { "-" } else { &n.cert_fingerprint });
    if !n.certificate.is_empty() {
        println!();
        print!("{}", String::from_utf8_lossy(&n.certificate));
    }
}

/// What `swarmca ca` does.
#[derive(Debug)]
pub enum CaAction {
    /// Print the root.
    Show,
    /// Start (or restart) a rotation.
    Rotate {
        ca_cert: Option<PathBuf>,
        ca_key: Option<PathBuf>,
        external_ca: Vec<ExternalCaArg>,
        cert_expiry: Option<Duration>,
    },
    /// Abort the rotation in progress.
    Abort,
    /// Follow the rotation in progress.
    Watch,
}

fn read_file(p: &Path) -> Result<Vec<u8>, Fatal> {
    std::fs::read(p).map_err(|e| fatal!("cannot read {}: {e}", p.display()))
}

/// `swarmca ca`.
pub async fn ca(data_dir: &Path, action: CaAction, detach: bool, quiet: bool) -> Result<(), Fatal> {
    let mut c = client(data_dir).await?;
    let target = match action {
        CaAction::Show => {
            let info = c.get_cluster_info(admin::ClusterInfoRequest {}).await.map_err(rpc_err)?.into_inner();
            if !quiet {
                eprintln!("Root CA of cluster {} ({})", info.id, info.root_ca_digest);
                let st = c.get_rotation_status(admin::RotationStatusRequest {}).await.map_err(rpc_err)?;
                let st = st.into_inner();
                if st.in_progress {
                    eprintln!(
                        "A root rotation to {} is in progress ({}/{} nodes converged); follow it with `swarmca ca --watch`.",
                        st.target_digest, st.converged, st.nodes
                    );
                }
            }
            print!("{}", String::from_utf8_lossy(&info.root_ca_pem));
            return Ok(());
        }
        CaAction::Abort => {
            let st = c
                .rotate_root(admin::RotateRootRequest { abort: true, ..Default::default() })
                .await
                .map_err(rpc_err)?
                .into_inner();
            if !quiet {
                eprintln!("Root rotation aborted; the cluster keeps root {}.", st.current_digest);
                eprintln!("Nodes already asked to renew keep certificates from the rotation's cross-signed root, valid under the current root.");
            }
            return Ok(());
        }
        CaAction::Watch => {
            let st =
                c.get_rotation_status(admin::RotationStatusRequest {}).await.map_err(rpc_err)?.into_inner();
            if !st.in_progress {
                if !quiet {
                    eprintln!("No root rotation in progress; the root is {}.", st.current_digest);
                }
                return Ok(());
            }
            st.target_digest
        }
        CaAction::Rotate { ca_cert, ca_key, external_ca, cert_expiry } => {
            let req = admin::RotateRootRequest {
                ca_cert: ca_cert.as_deref().map(read_file).transpose()?.unwrap_or_default(),
                ca_key: ca_key.as_deref().map(key_or_reference).transpose()?.unwrap_or_default(),
                abort: false,
                cert_expiry_secs: cert_expiry.map_or(0, |d| d.as_secs()),
                set_external_cas: !external_ca.is_empty(),
                external_cas: external_ca.iter().map(ExternalCaArg::to_spec).collect::<Result<_, _>>()?,
            };
            if !quiet {
                eprintln!(
                    "Starting a root rotation ({})...",
                    if req.ca_cert.is_empty() { "generating a new root" } else { "to the given root" }
                );
            }
            let st = c.rotate_root(req).await.map_err(rpc_err)?.into_inner();
            if !quiet {
                eprintln!("Rotating from {} to {}.", st.current_digest, st.target_digest);
            }
            st.target_digest
        }
    };
    if detach {
        if !quiet {
            eprintln!(
                "Detached; follow the rotation with `swarmca ca --watch --data-dir {}`.",
                data_dir.display()
            );
        }
        return Ok(());
    }
    watch_rotation(&mut c, &target, quiet).await?;
    let info = c.get_cluster_info(admin::ClusterInfoRequest {}).await.map_err(rpc_err)?.into_inner();
    print!("{}", String::from_utf8_lossy(&info.root_ca_pem));
    Ok(())
}

/// Shows the progress of the rotation to `target` until it completes (Ok), is aborted or
/// replaced (error), or the user interrupts (error, the rotation goes on).
async fn watch_rotation(c: &mut AdminClient<Channel>, target: &str, quiet: bool) -> Result<(), Fatal> {
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal();
    let start = std::time::Instant::now();
    let mut last_line = String::new();
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    loop {
        let st = c.get_rotation_status(admin::RotationStatusRequest {}).await.map_err(rpc_err)?.into_inner();
        if !st.in_progress {
            if tty && !quiet {
                eprintln!();
            }
            if st.current_digest == target {
                if !quiet {
                    eprintln!(
                        "Root rotation complete after {}s: the root is now {}; both join tokens were regenerated \
                         (see `swarmca join-token worker|manager`).",
                        start.elapsed().as_secs(),
                        st.current_digest
                    );
                }
                return Ok(());
            }
            return Err(fatal!(
                "the root rotation to {target} was aborted; the root is {}",
                st.current_digest
            ));
        }
        if st.target_digest != target {
            return Err(fatal!(
                "the root rotation was restarted towards {} by someone else",
                st.target_digest
            ));
        }
        if !quiet {
            let line = progress_line(&st);
            if tty {
                eprint!("\r\x1b[2K{line}");
            } else if line != last_line {
                eprintln!("{line}");
            }
            last_line = line;
        }
        tokio::select! {
            _ = &mut interrupt => {
                if !quiet {
                    eprintln!();
                    eprintln!("Stopped watching; the rotation goes on (follow it again with `swarmca ca --watch`).");
                }
                return Err(fatal!("interrupted"));
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// One line of rotation progress: converged count, nodes renewing, and who blocks.
fn progress_line(st: &admin::RotationStatus) -> String {
    let mut line =
        format!("Rotating root: {}/{} nodes converged, {} renewing", st.converged, st.nodes, st.renewing);
    let waiting: Vec<String> = st
        .blocking
        .iter()
        .take(5)
        .map(|n| format!("{} ({}, issuer {})", n.id, n.state, n.issuer_state))
        .collect();
    if !waiting.is_empty() {
        line.push_str("; waiting for ");
        line.push_str(&waiting.join(", "));
        let more = usize::try_from(st.nodes.saturating_sub(st.converged)).unwrap_or(usize::MAX);
        if more > waiting.len() {
            line.push_str(&format!(" and {} more", more - waiting.len()));
        }
    }
    line
}

fn print_cluster(info: &admin::ClusterInfo) {
    println!("ID:                 {}", info.id);
    println!("Root CA digest:     {}", info.root_ca_digest);
    println!(
        "Certificate expiry: {}",
        humantime::format_duration(Duration::from_secs(info.cert_expiry_secs))
    );
    println!("Autolock:           {}", info.autolock);
    println!("Nodes:              {} ({} waiting for a certificate)", info.nodes, info.pending);
    if info.external_cas.is_empty() {
        println!("External CAs:       none (local signing)");
    } else {
        println!("External CAs:");
        for e in &info.external_cas {
            let bound = if e.ca_cert.is_empty() { "current root" } else { "a given root" };
            println!("  - {} (signs for {bound})", e.url);
        }
    }
    if !info.signer_problem.is_empty() {
        println!("Signer problem:     {}", info.signer_problem);
    }
}

/// `swarmca cluster ...`.
pub async fn cluster(cmd: ClusterCommand) -> Result<(), Fatal> {
    match cmd {
        ClusterCommand::Update { data, cert_expiry, autolock, external_ca, clear_external_ca } => {
            let set_external_cas = clear_external_ca || !external_ca.is_empty();
            if cert_expiry.is_none() && autolock.is_none() && !set_external_cas {
                return Err(fatal!(
                    "nothing to update: give --cert-expiry, --autolock, --external-ca or --clear-external-ca"
                ));
            }
            let external_cas = external_ca.iter().map(|e| e.to_spec()).collect::<Result<Vec<_>, _>>()?;
            let mut c = client(&data.path).await?;
            let info = c
                .update_cluster(admin::UpdateClusterRequest {
                    cert_expiry_secs: cert_expiry.map_or(0, |d| d.as_secs()),
                    autolock,
                    set_external_cas,
                    external_cas,
                })
                .await
                .map_err(rpc_err)?
                .into_inner();
            println!("Cluster updated.");
            print_cluster(&info);
            if autolock == Some(true) {
                println!(
                    "\nRetrieve the unlock key with `swarmca unlock-key --data-dir {}`.",
                    data.path.display()
                );
            }
            Ok(())
        }
        ClusterCommand::Inspect { data } => {
            let mut c = client(&data.path).await?;
            let info = c.get_cluster_info(admin::ClusterInfoRequest {}).await.map_err(rpc_err)?.into_inner();
            print_cluster(&info);
            Ok(())
        }
    }
}

/// A key argument: a `pkcs11:` URI as it is, otherwise the PEM file it names.
pub fn key_or_reference(arg: &Path) -> Result<Vec<u8>, Fatal> {
    let s = arg.to_string_lossy();
    if s.starts_with("pkcs11:") {
        return Ok(s.as_bytes().to_vec());
    }
    read_file(arg)
}

/// `swarmca unlock-key`.
pub async fn unlock_key(data_dir: &Path, rotate: bool, quiet: bool) -> Result<(), Fatal> {
    let mut c = client(data_dir).await?;
    let r = c.unlock_key(admin::UnlockKeyRequest { rotate }).await.map_err(rpc_err)?.into_inner();
    if !r.autolock {
        return Err(fatal!("autolock is not enabled for this cluster (enable it with `swarmca cluster update --autolock true`)"));
    }
    if quiet {
        println!("{}", r.unlock_key);
    } else {
        if rotate {
            println!("Successfully rotated manager unlock key.\n");
        }
        println!(
            "To unlock a swarm manager after it restarts, use this unlock key:\n\n    {}\n",
            r.unlock_key
        );
        println!("Keep the key safe: without it a restarted, locked manager cannot rejoin.");
    }
    Ok(())
}

/// `swarmca unlock`: the key from `key_file`, or standard input when it is not a terminal, or
/// asked for without echo; sent to the locked manager on its control socket.
pub async fn unlock(data_dir: &Path, key_file: Option<&Path>) -> Result<(), Fatal> {
    use std::io::IsTerminal as _;
    let key = match key_file {
        Some(f) => zeroize::Zeroizing::new(
            std::fs::read_to_string(f).map_err(|e| fatal!("cannot read {}: {e}", f.display()))?,
        ),
        None if !std::io::stdin().is_terminal() => {
            let mut s = zeroize::Zeroizing::new(String::new());
            std::io::stdin().read_line(&mut s).map_err(|e| fatal!("cannot read the key from stdin: {e}"))?;
            s
        }
        None => prompt_hidden("Enter unlock key: ")?,
    };
    let mut c = client(data_dir).await?;
    let r = c
        .unlock(admin::UnlockRequest { unlock_key: key.trim().to_owned() })
        .await
        .map_err(rpc_err)?
        .into_inner();
    println!("{}", capitalized(&r.message));
    Ok(())
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// Reads a line from the terminal with echo off (through `stty`, restored even on error).
fn prompt_hidden(prompt: &str) -> Result<zeroize::Zeroizing<String>, Fatal> {
    use std::io::Write as _;
    let stty = |arg: &str| {
        std::process::Command::new("stty").arg(arg).stdin(std::process::Stdio::inherit()).status()
    };
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let hidden = stty("-echo").is_ok_and(|s| s.success());
    let mut s = zeroize::Zeroizing::new(String::new());
    let read = std::io::stdin().read_line(&mut s);
    if hidden {
        let _ = stty("echo");
        eprintln!();
    }
    read.map_err(|e| fatal!("cannot read the key: {e}"))?;
    Ok(s)
}
