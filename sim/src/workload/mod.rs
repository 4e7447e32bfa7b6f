//! Clients: nodes that join with a token, poll for their certificate and renew it over
//! (simulated) mTLS, with the real generated tonic clients — and misbehave on purpose: garbage
//! CSRs, stale tokens, duplicate joins, racing renewals, cancelled polls (F5).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use madsim::rand::{thread_rng, Rng};
use swarmca_types::{IssueNodeCertificateRequest, NodeCertificateStatusRequest};
use tonic::Code;

use crate::mirror::short;
use crate::peers::present;
use crate::shared::{lock, now, JoinObs, RenewObs, Shared, StatusObs};

mod misbehave;
mod util;

pub use util::exp_delay;
use util::*;

/// Address of client `i` (up to [`crate::options::MAX_CLIENTS`]), in 10.1.0.0/16.
pub fn client_ip(i: usize) -> IpAddr {
    let n = i + 1;
    IpAddr::V4(Ipv4Addr::new(10, 1, (n / 250) as u8, (n % 250 + 1) as u8))
}

/// A client's credentials and the root bundle it trusts (I8: the chain always verifies
/// against the bundle).
#[derive(Clone)]
struct Creds {
    node_id: String,
    chain: Vec<Vec<u8>>,
    bundle: Vec<u8>,
    /// Whether the leaf names the manager OU.
    manager: bool,
}

/// How a wait for a certificate ended.
enum Waited {
    Issued(Vec<u8>),
    Failed,
    Gone,
    GaveUp,
}

struct Client {
    idx: usize,
    shared: Arc<Shared>,
    managers: Vec<SocketAddr>,
    manager_role: bool,
    /// The manager this node talks to (see [`Client::manager`]).
    sticky: std::sync::Mutex<Option<SocketAddr>>,
}

/// Codes a call may end with for reasons of the network or of a manager stopping (or not yet
/// serving).
pub const TRANSPORT: [Code; 4] = [Code::Unavailable, Code::DeadlineExceeded, Code::Cancelled, Code::Aborted];

impl Client {
    async fn call_issue(
        &self,
        req: IssueNodeCertificateRequest,
        creds: Option<&Creds>,
    ) -> Result<String, Code> {
        let mut r = tonic::Request::new(req);
        if let Some(creds) = creds {
            present(&mut r, &creds.chain);
        }
        self.send_issue(r).await
    }

    /// The manager this node talks to: kept from call to call, as a SwarmKit agent keeps its
    /// manager connection, left after a call to it failed, and now and then swapped for
    /// another (the agent's connection broker rebalances).
    fn manager(&self) -> Option<SocketAddr> {
        let mut m = lock(&self.sticky);
        if m.is_none() || chance(0.15) {
            *m = pick(&self.managers);
        }
        *m
    }

    /// A call to `addr` failed in transport: the next call goes to another manager.
    fn unreachable(&self, addr: SocketAddr) {
        let mut m = lock(&self.sticky);
        if *m == Some(addr) {
            *m = None;
        }
    }

    /// Sends `r` to the node's manager; the node ID, or the gRPC code.
    async fn send_issue(&self, r: tonic::Request<IssueNodeCertificateRequest>) -> Result<String, Code> {
        let addr = self.manager().ok_or(Code::Unavailable)?;
        let mut c = connect(addr).ok_or(Code::Unavailable)?;
        let code = match madsim::time::timeout(Duration::from_secs(5), c.issue_node_certificate(r)).await {
            Ok(Ok(resp)) => return Ok(resp.into_inner().node_id),
            Ok(Err(s)) => s.code(),
            Err(_) => Code::DeadlineExceeded,
        };
        if TRANSPORT.contains(&code) {
            self.unreachable(addr);
        }
        Err(code)
    }

    /// Polls like SwarmKit's client until the certificate for `csr` is final.
    async fn wait(&self, node_id: &str, csr: &[u8]) -> Waited {
        let deadline = now() + Duration::from_secs(90);
        while now() < deadline && !self.shared.done() {
            let short_poll = chance(self.shared.opts.p_cancel_poll);
            let Some(addr) = self.manager() else { return Waited::GaveUp };
            let Some(mut c) = connect(addr) else { return Waited::GaveUp };
            let per_call = if short_poll { Duration::from_millis(200) } else { Duration::from_secs(5) };
            let mut req = tonic::Request::new(NodeCertificateStatusRequest { node_id: node_id.to_string() });
            req.set_timeout(per_call);
            let started = now();
            let r =
                madsim::time::timeout(per_call + Duration::from_millis(100), c.node_certificate_status(req))
                    .await;
            match r {
                Ok(Ok(resp)) => {
                    let resp = resp.into_inner();
                    let status = resp.status.unwrap_or_default();
                    let cert = resp.certificate.unwrap_or_default();
                    lock(&self.shared.statuses).push(StatusObs {
                        node: node_id.to_string(),
                        start: started,
                        end: now(),
                        state: cert.status.as_ref().map_or(status.state, |s| s.state),
                        cert_digest: short(&cert.certificate),
                        csr_digest: short(&cert.csr),
                    });
                    let answered = cert.status.as_ref().map_or(status.state, |s| s.state);
                    if !matches!(answered, 3..=5) {
                        // SwarmKit's status call is a long poll: it answers final states only.
                        self.shared.violation(
                            "I10",
                            format!("status of node {node_id} answered non-final state {answered}"),
                        );
                    }
                    if cert.csr != csr {
                        madsim::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                    match status.state {
                        3 | 5 if !cert.certificate.is_empty() => return Waited::Issued(cert.certificate),
                        4 => return Waited::Failed,
                        _ => madsim::time::sleep(Duration::from_millis(500)).await,
                    }
                }
                Ok(Err(s)) if s.code() == Code::NotFound => return Waited::Gone,
                Ok(Err(s)) => {
                    if TRANSPORT.contains(&s.code()) {
                        self.unreachable(addr);
                    }
                    if s.code() == Code::Cancelled {
                        self.shared.coverage.hit("branch.status_cut_by_stop");
                    }
                    if s.code() == Code::DeadlineExceeded && short_poll {
                        self.shared.coverage.hit("fault.cancelled_poll");
                    }
                    madsim::time::sleep(Duration::from_millis(300)).await;
                }
                Err(_) => {
                    if short_poll {
                        self.shared.coverage.hit("fault.cancelled_poll");
                    } else {
                        self.unreachable(addr);
                    }
                }
            }
        }
        Waited::GaveUp
    }

    /// Client-side checks of an issued certificate (I1, and I8 from the node's view: it must
    /// verify against the bundle the node holds, or — after a root rotation completed — the
    /// bundle the cluster serves now), then one authenticated call with it, as an agent's
    /// session would make (the CA records which root issued what the node uses).
    async fn accept(&self, node_id: &str, cert_pem: &[u8], csr: &[u8], bundle: &[u8]) -> Option<Creds> {
        let facts = &self.shared.facts;
        if facts.cert_pem(cert_pem).map(|c| c.spki.clone()) != facts.csr_key(csr).map(|k| k.to_vec()) {
            self.shared.violation(
                "I1",
                format!("client {} received a certificate for another key (node {node_id})", self.idx),
            );
            return None;
        }
        let chain = chain_of(cert_pem);
        let mut bundle = bundle.to_vec();
        let verified = match self.shared.verify(&bundle, &chain) {
            Ok(id) => Ok(id),
            Err(first) => {
                let served = match self.manager() {
                    Some(addr) => fetch_root(addr, None).await,
                    None => None,
                };
                match served {
                    Some(served) => match self.shared.verify(&served, &chain) {
                        Ok(id) => {
                            self.shared.coverage.hit("rotation.bundle_picked_up");
                            bundle = served;
                            Ok(id)
                        }
                        // The manager asked may be cut off from the store and serve an older
                        // root; the one the store holds now is what the dispatcher would push.
                        Err(second) => {
                            let stored = lock(&self.shared.cluster_root).clone();
                            match self.shared.verify(&stored, &chain) {
                                Ok(id) => {
                                    self.shared.coverage.hit("rotation.bundle_from_store");
                                    bundle = stored;
                                    Ok(id)
                                }
                                Err(third) => Err(format!(
                                    "{first}; against the served root: {second}; against the stored root: {third}"
                                )),
                            }
                        }
                    },
                    // Cannot ask now: keep what we have, this is not the CA's fault.
                    None => return None,
                }
            }
        };
        let creds = match verified {
            Ok(id) if id == node_id => Creds {
                node_id: node_id.to_string(),
                manager: leaf_is_manager(&self.shared.facts, &chain),
                chain,
                bundle,
            },
            Ok(id) => {
                self.shared.violation(
                    "I2",
                    format!("client {} got a certificate for node {id} instead of {node_id}", self.idx),
                );
                return None;
            }
            Err(e) => {
                self.shared.violation(
                    "I8",
                    format!(
                        "client {} got a certificate for node {node_id} that verifies neither against its \
                         root bundle nor against the root the cluster serves or stores: {e}",
                        self.idx
                    ),
                );
                return None;
            }
        };
        lock(&self.shared.held).insert(self.idx, node_id.to_string());
        // The first authenticated call with the new certificate; adopt the served bundle if our
        // certificate verifies against it (after a rotation completed, it is the new root).
        if let Some(addr) = self.manager() {
            if let Some(served) = fetch_root(addr, Some(&creds.chain)).await {
                if served != creds.bundle && self.shared.verify(&served, &creds.chain).is_ok() {
                    self.shared.coverage.hit("rotation.bundle_picked_up");
                    return Some(Creds { bundle: served, ..creds });
                }
            }
        }
        Some(creds)
    }

    async fn join(&self) -> Option<Creds> {
        let opts = &self.shared.opts;
        let current = self.shared.current_token(self.manager_role)?;
        let token = if chance(opts.p_bad_token) {
            // Wrong in every way a token can be: stale, empty, truncated, one character off,
            // a prefix, or not a token at all.
            match thread_rng().gen_range(0..6) {
                0 => self.shared.stale_token(self.manager_role).unwrap_or_default(),
                1 => String::new(),
                2 => current.get(..current.len().saturating_sub(1)).unwrap_or_default().to_string(),
                3 => {
                    let mut t = current.clone();
                    let last = if t.ends_with('a') { 'b' } else { 'a' };
                    t.pop();
                    t.push(last);
                    t
                }
                4 => current.get(..9).unwrap_or_default().to_string(),
                _ => "SWMTKN-1-not-a-token".into(),
            }
        } else {
            current
        };
        let stale = self.shared.current_token(self.manager_role).as_deref() != Some(token.as_str());
        // Like a joining node: download the root first (the digest check against the token is
        // left out on purpose, so that stale and wrong tokens still reach the CA).
        let addr = self.manager()?;
        let Some(bundle) = fetch_root(addr, None).await else {
            self.unreachable(addr);
            return None;
        };
        // What a joining node then checks (SwarmKit's DownloadRootCA): the bundle hashes to the
        // digest in the token. Without root rotations the root never changes, so any manager
        // must serve exactly the bytes the tokens were made for.
        if !stale && !opts.root_rotation {
            if let Ok(t) = swarmca_core::token::parse_join_token(&token) {
                if swarmca_core::rootca::digest(&bundle) == t.root_digest {
                    self.shared.coverage.hit("branch.root_download_matches_token");
                } else {
                    self.shared.violation(
                        "I8",
                        format!(
                            "client {} downloaded a root bundle that does not hash to its join token's digest",
                            self.idx
                        ),
                    );
                }
            }
        }
        let mut csr = new_csr()?;
        if chance(opts.p_garbage_csr) {
            csr =
                b"-----BEGIN CERTIFICATE REQUEST-----\ngarbage\n-----END CERTIFICATE REQUEST-----\n".to_vec();
        }
        let req =
            IssueNodeCertificateRequest { csr: csr.clone(), token: token.clone(), ..Default::default() };
        if chance(opts.p_duplicate_join) {
            self.shared.coverage.hit("fault.duplicate_join");
            let start = now();
            let r = self.call_issue(req.clone(), None).await;
            self.record_join(&token, start, &r);
        }
        let start = now();
        let r = self.call_issue(req, None).await;
        self.record_join(&token, start, &r);
        let node_id = match r {
            Ok(id) => id,
            Err(Code::InvalidArgument) if stale => {
                self.shared.coverage.hit("branch.stale_token_refused");
                return None;
            }
            Err(_) => return None,
        };
        match self.wait(&node_id, &csr).await {
            Waited::Issued(cert) => {
                let c = self.accept(&node_id, &cert, &csr, &bundle).await;
                if c.is_some() {
                    self.shared.coverage.hit("branch.join_issued");
                }
                c
            }
            Waited::Failed | Waited::Gone | Waited::GaveUp => None,
        }
    }

    fn record_join(&self, token: &str, start: Duration, r: &Result<String, Code>) {
        self.shared.log.push(format!(
            "rpc: client {} join -> {:?}",
            self.idx,
            r.as_ref().map_err(|c| format!("{c:?}"))
        ));
        lock(&self.shared.joins).push(JoinObs {
            client: self.idx,
            token: token.to_string(),
            start,
            end: now(),
            result: r.clone(),
        });
    }

    async fn renew_once(&self, creds: &Creds) -> Result<Option<Creds>, Code> {
        let csr = new_csr().ok_or(Code::Internal)?;
        let start = now();
        let r = self
            .call_issue(IssueNodeCertificateRequest { csr: csr.clone(), ..Default::default() }, Some(creds))
            .await;
        let rpc_end = now();
        self.shared.log.push(format!(
            "rpc: client {} renew {} -> {:?}",
            self.idx,
            creds.node_id,
            r.as_ref().map_err(|c| format!("{c:?}"))
        ));
        let record = |end| RenewObs {
            node: creds.node_id.clone(),
            start,
            rpc_end,
            end,
            ok: r.is_ok(),
            code: r.as_ref().err().copied(),
        };
        let Ok(id) = r.clone() else {
            lock(&self.shared.renewals).push(record(rpc_end));
            return r.map(|_| None);
        };
        if id != creds.node_id {
            self.shared.violation("I3", format!("renewal by node {} answered for node {id}", creds.node_id));
            return Ok(None);
        }
        let waited = self.wait(&id, &csr).await;
        lock(&self.shared.renewals).push(record(now()));
        match waited {
            Waited::Issued(cert) => {
                let c = self.accept(&id, &cert, &csr, &creds.bundle).await;
                if c.is_some() {
                    self.shared.coverage.hit("branch.renewal_issued");
                }
                Ok(c)
            }
            Waited::Gone => Err(Code::NotFound),
            Waited::Failed | Waited::GaveUp => Ok(None),
        }
    }

    async fn renew(&self, creds: Creds) -> Option<Creds> {
        if chance(self.shared.opts.p_bad_token) {
            self.impostor(&creds).await;
        }
        if chance(self.shared.opts.p_concurrent_renew) {
            self.shared.coverage.hit("fault.concurrent_renew");
            let (a, b) = tokio::join!(self.renew_once(&creds), self.renew_once(&creds));
            return match (a, b) {
                (Ok(Some(c)), _) | (_, Ok(Some(c))) => Some(c),
                (Err(c @ (Code::InvalidArgument | Code::NotFound)), _)
                | (_, Err(c @ (Code::InvalidArgument | Code::NotFound))) => self.refused(&creds, c),
                _ => Some(creds),
            };
        }
        match self.renew_once(&creds).await {
            Ok(Some(c)) => Some(c),
            Ok(None) => Some(creds),
            Err(c @ (Code::InvalidArgument | Code::NotFound)) => self.refused(&creds, c),
            Err(_) => Some(creds),
        }
    }

    /// The renewal was refused: if the node was removed, that is the blacklist working.
    /// Otherwise a node holding a certificate that is valid now was locked out (I8): its
    /// chain verifies against the bundle it holds, so the CA must still trust it — a root
    /// rotation may complete only once every node moved to the new root.
    fn refused(&self, creds: &Creds, code: Code) -> Option<Creds> {
        // Removed: as the admin was told, or as the store holds it (a removal whose answer
        // was lost, before the admin found out).
        if lock(&self.shared.removed).iter().any(|(id, _)| *id == creds.node_id)
            || lock(&self.shared.blacklisted).contains(&creds.node_id)
        {
            self.shared.coverage.hit("branch.blacklist_refused");
            lock(&self.shared.held).remove(&self.idx);
            return None;
        }
        let margin = self.shared.opts.max_clock_skew + Duration::from_secs(300);
        if code == Code::InvalidArgument && time_valid(&self.shared.facts, &creds.chain, margin) {
            self.shared.violation(
                "I8",
                format!(
                    "node {} (client {}) was refused renewal although it holds a valid certificate \
                     from the cluster's roots",
                    creds.node_id, self.idx
                ),
            );
        }
        Some(creds.clone())
    }

    /// The node's own status (final states answer at once): whether the CA asked it to
    /// renew (ROTATE), as SwarmKit's dispatcher would tell an agent.
    async fn asked_to_rotate(&self, creds: &Creds) -> bool {
        let Some(addr) = self.manager() else { return false };
        let Some(mut c) = connect(addr) else { return false };
        let mut req = tonic::Request::new(NodeCertificateStatusRequest { node_id: creds.node_id.clone() });
        req.set_timeout(Duration::from_secs(1));
        match madsim::time::timeout(Duration::from_secs(2), c.node_certificate_status(req)).await {
            Ok(Ok(r)) => r.into_inner().status.is_some_and(|s| s.state == 5),
            _ => false,
        }
    }

    /// When the agent renews on its own: at a random point in 50–80 % of its certificate's
    /// validity, as SwarmKit agents do, or earlier for an operator's forced renewal (mean
    /// `renew_interval`).
    fn renewal_due(&self, creds: &Creds) -> Duration {
        let forced = now() + exp_delay(self.shared.opts.renew_interval);
        let Some(leaf) = creds.chain.first() else { return forced };
        let Some(c) = self.shared.facts.cert(leaf) else { return forced };
        let (from, to) = (c.not_before, c.not_after);
        let at = from as f64 + (to - from).max(0) as f64 * thread_rng().gen_range(0.5..0.8);
        let unix_now =
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        forced.min(now() + Duration::from_secs_f64((at - unix_now).max(0.0)))
    }

    /// I16: the certificate a node holds when it renews has not expired.
    fn check_not_expired(&self, creds: &Creds) {
        let leaf = creds.chain.first().and_then(|l| self.shared.facts.cert(l));
        if let Some(c) = leaf {
            crate::checkers::i16_certificate_lives::check_held(
                &self.shared,
                self.idx,
                &creds.node_id,
                c.not_after,
            );
        }
    }

    /// Whether SwarmKit's dispatcher would tell the node to renew now: its role is not its
    /// certificate's any more, or the CA marked its certificate ROTATE (a root rotation).
    fn told_to_renew(&self, creds: &Creds) -> bool {
        let Some(&(role, state)) = lock(&self.shared.dispatch).get(&creds.node_id) else { return false };
        if state == swarmca_types::issuance_status::State::Rotate as i32 {
            self.shared.coverage.hit("renew.told_rotate");
            return true;
        }
        if (role == swarmca_types::NodeRole::Manager as i32) != creds.manager {
            self.shared.coverage.hit("renew.told_role_changed");
            return true;
        }
        false
    }

    async fn main(self) {
        let mut creds: Option<Creds> = None;
        // No renewal on the dispatcher's word before this (a renewal that did not change the
        // node's role or status must not be retried at once).
        let mut told_gap = Duration::ZERO;
        madsim::time::sleep(Duration::from_millis(thread_rng().gen_range(0..5000))).await;
        while !self.shared.healing() {
            creds = match creds {
                None => {
                    let c = self.join().await;
                    if c.is_none() {
                        madsim::time::sleep(Duration::from_secs(thread_rng().gen_range(1..10))).await;
                    }
                    c
                }
                Some(c) => {
                    // Interrupted by the heal: in the liveness phase a node must follow a root
                    // rotation promptly.
                    let until = self.renewal_due(&c);
                    let waker = self.shared.waker(&c.node_id);
                    while now() < until && !self.shared.healing() {
                        if self.told_to_renew(&c) {
                            if now() >= told_gap {
                                told_gap = now() + Duration::from_secs(20);
                                break;
                            }
                            madsim::time::sleep(told_gap - now()).await;
                            continue;
                        }
                        // Asleep until the renewal is due, the dispatcher has news for the
                        // node (a moment later: the agent's session delivers it), or the heal.
                        // Biased: an unbiased select draws from tokio's process-global RNG,
                        // which would make a seed replay differently within one process.
                        tokio::select! {
                            biased;
                            _ = self.shared.heal_notify.notified() => {}
                            _ = waker.notified() => {
                                madsim::time::sleep(Duration::from_millis(thread_rng().gen_range(0..3000))).await;
                            }
                            _ = madsim::time::sleep(until - now()) => {}
                        }
                    }
                    if self.shared.healing() {
                        Some(c)
                    } else {
                        if now() >= until {
                            self.shared.coverage.hit("renew.on_schedule");
                        }
                        self.check_not_expired(&c);
                        // Removed managers keep trying too: the blacklist must stop them.
                        self.unlock_key(&c).await;
                        let before = c.chain.clone();
                        let renewed = self.renew(c).await;
                        if renewed.as_ref().is_some_and(|n| n.chain == before) {
                            // Not renewed (no manager answered, or it refused): tried again a
                            // little later, as SwarmKit's agent backs off, not at once.
                            madsim::time::sleep(Duration::from_millis(thread_rng().gen_range(2000..8000)))
                                .await;
                        }
                        renewed
                    }
                }
            };
            if creds.is_none() {
                lock(&self.shared.held).remove(&self.idx);
            }
        }
        // Liveness phase: no new joins; a node that holds a certificate follows role changes
        // and root rotations (renews when the dispatcher would tell it to, again 20 s after a
        // renewal that did not get it there) until the run is judged.
        let completed = || self.shared.rotations_completed.load(std::sync::atomic::Ordering::SeqCst);
        let mut seen = completed();
        while let Some(c) = creds.take() {
            if self.shared.finishing() || self.shared.done() {
                return;
            }
            madsim::time::sleep(Duration::from_secs(3)).await;
            let rotating = self.shared.rotation_in_progress.load(std::sync::atomic::Ordering::SeqCst);
            creds = if rotating && self.asked_to_rotate(&c).await && !self.shared.finishing() {
                self.shared.coverage.hit("rotation.node_followed");
                self.renew(c).await
            } else if now() >= told_gap && self.told_to_renew(&c) && !self.shared.finishing() {
                told_gap = now() + Duration::from_secs(20);
                self.renew(c).await
            } else if completed() != seen && !self.shared.finishing() {
                // A rotation completed: now and then a node renews once more, as a periodic
                // renewal would, with the certificate from the rotation; the new one is from
                // the new root only.
                seen = completed();
                if chance(0.3) {
                    self.renew(c).await
                } else {
                    Some(c)
                }
            } else {
                Some(c)
            };
        }
        lock(&self.shared.held).remove(&self.idx);
    }
}

/// Starts client node `idx`; returns its node ID.
pub fn spawn_client(idx: usize, shared: Arc<Shared>, managers: Vec<SocketAddr>) -> madsim::task::NodeId {
    let manager_role = {
        let share = shared.opts.manager_share;
        chance(share)
    };
    let node = madsim::runtime::Handle::current()
        .create_node()
        .name(format!("client-{idx}"))
        .ip(client_ip(idx))
        .build();
    let client = Client { idx, shared, managers, manager_role, sticky: Default::default() };
    node.spawn(client.main());
    node.id()
}
