//! After convergence (no faults, nothing left waiting), a prober node asks the managers that
//! are up for the status of every node (each node at one of them, spread evenly), and every
//! one of them for a node that never existed and for an empty ID, as an agent or an operator
//! would. The answers are judged by I10
//! ([`crate::checkers::i10_status_matches_store::check_probes`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use madsim::rand::{thread_rng, Rng};
use swarmca_proto::node_ca_client::NodeCaClient;
use swarmca_types::NodeCertificateStatusRequest;
use tonic::transport::Endpoint;
use tonic::Code;

use crate::mirror::short;
use crate::shared::now;

/// A node ID no node has (IDs are 25 lowercase base-36 characters).
pub const UNKNOWN_NODE: &str = "probe-no-such-node";

/// How long a probe waits: a node in a final state is answered at once.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(5);

/// One status call of the prober.
#[derive(Debug, Clone)]
pub struct ProbeObs {
    pub manager: usize,
    pub node: String,
    pub start: Duration,
    pub end: Duration,
    /// (top-level status (state, err), the certificate's status (state, err), certificate
    /// digest, CSR digest), or the gRPC code.
    pub result: Result<((i32, String), (i32, String), String, String), Code>,
}

/// Runs the probes on a node of its own; returns every observation.
pub async fn probe(managers: Vec<(usize, SocketAddr)>, nodes: Vec<String>) -> Vec<ProbeObs> {
    let node = madsim::runtime::Handle::current()
        .create_node()
        .name("prober")
        .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 3, 1)))
        .build();
    // Every manager is asked about the unknown and the empty ID, and about its share of the
    // nodes: node k goes to manager (offset + k) mod n, from a random offset (one answer per
    // node suffices; followers and the leader all answer from the same store).
    let offset = if managers.is_empty() { 0 } else { thread_rng().gen_range(0..managers.len()) };
    let mut handles = Vec::new();
    for (j, (i, addr)) in managers.iter().enumerate() {
        let mut ids: Vec<String> = nodes
            .iter()
            .enumerate()
            .filter(|(k, _)| (offset + k) % managers.len() == j)
            .map(|(_, id)| id.clone())
            .collect();
        ids.push(UNKNOWN_NODE.to_string());
        ids.push(String::new());
        handles.push(node.spawn(probe_manager(*i, *addr, ids)));
    }
    let mut out = Vec::new();
    for h in handles {
        out.extend(h.await.unwrap_or_default());
    }
    out
}

async fn probe_manager(manager: usize, addr: SocketAddr, ids: Vec<String>) -> Vec<ProbeObs> {
    let mut out = Vec::new();
    for id in ids {
        let start = now();
        let result = status(addr, &id).await;
        out.push(ProbeObs { manager, node: id, start, end: now(), result });
    }
    out
}

type Answer = ((i32, String), (i32, String), String, String);

async fn status(addr: SocketAddr, id: &str) -> Result<Answer, Code> {
    // Lazy: the simulated transport opens a connection per call anyway.
    let ch = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|_| Code::Internal)?
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    let mut req = tonic::Request::new(NodeCertificateStatusRequest { node_id: id.to_string() });
    req.set_timeout(PROBE_DEADLINE);
    let mut client = NodeCaClient::new(ch);
    let call = client.node_certificate_status(req);
    match madsim::time::timeout(PROBE_DEADLINE + Duration::from_millis(100), call).await {
        Err(_) => Err(Code::DeadlineExceeded),
        Ok(Err(s)) => Err(s.code()),
        Ok(Ok(resp)) => {
            let resp = resp.into_inner();
            let top = resp.status.map(|s| (s.state, s.err)).unwrap_or((-1, String::new()));
            let cert = resp.certificate.unwrap_or_default();
            let inner = cert.status.map(|s| (s.state, s.err)).unwrap_or((-1, String::new()));
            Ok((top, inner, short(&cert.certificate), short(&cert.csr)))
        }
    }
}
