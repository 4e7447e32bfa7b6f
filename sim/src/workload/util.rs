//! What every client needs: picks and delays drawn from the seed, channels to managers, the
//! root download, new CSRs, and facts about its own certificate chain.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use madsim::rand::{thread_rng, Rng};
use swarmca_proto::node_ca_client::NodeCaClient;
use tonic::transport::{Channel, Endpoint};

use crate::facts::Facts;
use crate::peers::present;

/// Whether the leaf of `chain` names the manager OU.
pub(super) fn leaf_is_manager(facts: &Facts, chain: &[Vec<u8>]) -> bool {
    chain
        .first()
        .and_then(|d| facts.cert(d))
        .is_some_and(|c| c.ous.iter().any(|ou| ou == swarmca_core::role::MANAGER_OU))
}

pub(super) fn chain_of(pem: &[u8]) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem).filter_map(|p| p.ok().map(|p| p.contents)).collect()
}

/// Whether the leaf of `chain` is valid at the simulated time with `margin` to spare.
pub(super) fn time_valid(facts: &Facts, chain: &[Vec<u8>], margin: Duration) -> bool {
    let Some(c) = chain.first().and_then(|d| facts.cert(d)) else { return false };
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let m = margin.as_secs() as i64;
    c.not_before + m <= now && now + m <= c.not_after
}

pub(super) fn pick<T: Copy>(v: &[T]) -> Option<T> {
    if v.is_empty() {
        return None;
    }
    let i = thread_rng().gen_range(0..v.len());
    v.get(i).copied()
}

pub(super) fn chance(p: f64) -> bool {
    p > 0.0 && thread_rng().gen_bool(p.min(1.0))
}

/// Exponentially distributed delay with the given mean.
pub fn exp_delay(mean: Duration) -> Duration {
    let u: f64 = thread_rng().gen_range(0.0001..1.0);
    Duration::from_secs_f64((-u.ln() * mean.as_secs_f64()).min(mean.as_secs_f64() * 5.0))
}

/// A channel to `addr`. Lazy: every call of the simulated transport opens its own connection
/// anyway, so an up-front handshake would only be one more round trip (a call to a manager that
/// is down fails as `Unavailable`, within the call's own timeout).
pub(super) fn channel(addr: SocketAddr) -> Option<Channel> {
    Some(
        Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy(),
    )
}

pub(super) fn connect(addr: SocketAddr) -> Option<NodeCaClient<Channel>> {
    channel(addr).map(NodeCaClient::new)
}

/// GetRootCACertificate from a manager, presenting `chain` if given (an authenticated call
/// records the node's TLS info).
pub(super) async fn fetch_root(addr: SocketAddr, chain: Option<&[Vec<u8>]>) -> Option<Vec<u8>> {
    let ch = channel(addr)?;
    let mut req = tonic::Request::new(swarmca_types::GetRootCaCertificateRequest {});
    if let Some(chain) = chain {
        present(&mut req, chain);
    }
    let r = madsim::time::timeout(
        Duration::from_secs(5),
        swarmca_proto::ca_client::CaClient::new(ch).get_root_ca_certificate(req),
    )
    .await;
    match r {
        Ok(Ok(resp)) => Some(resp.into_inner().certificate),
        _ => None,
    }
}

/// A new key and a CSR for it, as an agent makes them (the key itself is not needed: a client's
/// identity travels as its certificate chain).
pub(super) fn new_csr() -> Option<Vec<u8>> {
    swarmca_server::bootstrap::new_key_and_csr().ok().map(|(csr, _key)| csr)
}
