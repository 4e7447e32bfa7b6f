//! Caller identity in the simulator. madsim-tonic has no TLS, so a client puts the certificate
//! chain it would present in mTLS into request metadata; the unchanged server verifies that
//! chain against the cluster roots exactly as it verifies a handshake's chain.

use swarmca_server::peer::{CallInfo, PeerCertificates};

/// Metadata key carrying the hex DER chain, certificates separated by `.`.
pub const SIM_PEER_CERT: &str = "x-sim-peer-cert";

/// The server side: reads [`SIM_PEER_CERT`].
pub struct SimPeers;

impl PeerCertificates for SimPeers {
    fn chain(&self, call: &CallInfo<'_>) -> Option<Vec<Vec<u8>>> {
        let v = call.metadata.get(SIM_PEER_CERT)?.to_str().ok()?;
        let chain: Option<Vec<Vec<u8>>> = v.split('.').map(|h| hex::decode(h).ok()).collect();
        chain.filter(|c| !c.is_empty())
    }
}

/// The client side: attaches `chain` (leaf first) to a request.
pub fn present<T>(req: &mut tonic::Request<T>, chain: &[Vec<u8>]) {
    let v = chain.iter().map(hex::encode).collect::<Vec<_>>().join(".");
    if let Ok(v) = v.parse() {
        req.metadata_mut().insert(SIM_PEER_CERT, v);
    }
}
