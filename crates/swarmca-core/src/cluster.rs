//! The cluster object a swarm starts with.

use swarmca_types::{Annotations, CaConfig, Cluster, ClusterSpec, ExternalCa, JoinTokens, RootCa};

use crate::rootca::digest_string;

/// A new cluster `id` named "default": its root CA (`ca_key` empty when the root's key is not
/// held, i.e. signing is external only), its join tokens, and its CA settings (expiry, external
/// CAs; `None` for the defaults). Not yet stored, so without a version.
pub fn new_cluster(
    id: &str,
    ca_cert: &[u8],
    ca_key: &[u8],
    tokens: JoinTokens,
    ca_config: Option<CaConfig>,
) -> Cluster {
    Cluster {
        id: id.to_string(),
        spec: Some(ClusterSpec {
            annotations: Some(Annotations { name: "default".into(), ..Default::default() }),
            ca_config,
            ..Default::default()
        }),
        root_ca: Some(RootCa {
            ca_key: ca_key.to_vec(),
            ca_cert: ca_cert.to_vec(),
            ca_cert_hash: digest_string(ca_cert),
            join_tokens: Some(tokens),
            root_rotation: None,
            last_forced_rotation: 0,
        }),
        ..Default::default()
    }
}

/// The external CAs `cluster` lists (`spec.ca_config.external_cas`), in order; none when unset.
pub fn external_cas(cluster: &Cluster) -> Vec<ExternalCa> {
    cluster
        .spec
        .as_ref()
        .and_then(|s| s.ca_config.as_ref())
        .map(|c| c.external_cas.clone())
        .unwrap_or_default()
}

/// The subsystem name of the manager unlock key in `Cluster::unlock_keys` (SwarmKit's).
pub const UNLOCK_SUBSYSTEM: &str = "swarm-manager";

/// Whether managers of `cluster` are autolocked (`spec.encryption_config.auto_lock_managers`).
pub fn autolock_on(cluster: &Cluster) -> bool {
    cluster.spec.as_ref().and_then(|s| s.encryption_config.as_ref()).is_some_and(|e| e.auto_lock_managers)
}

/// The manager unlock key's bytes in `cluster`, if it holds one.
pub fn unlock_key(cluster: &Cluster) -> Option<&[u8]> {
    cluster.unlock_keys.iter().find(|k| k.subsystem == UNLOCK_SUBSYSTEM).map(|k| k.key.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_cluster_carries_its_root_digest_tokens_and_settings() {
        let tokens = JoinTokens { worker: "w".into(), manager: "m".into() };
        let cfg = CaConfig { external_cas: vec![Default::default()], ..Default::default() };
        let c = new_cluster("c1", b"CERT", b"", tokens.clone(), Some(cfg.clone()));
        assert_eq!(c.id, "c1");
        assert!(c.meta.is_none(), "not stored yet");
        let spec = c.spec.unwrap();
        assert_eq!(spec.annotations.unwrap().name, "default");
        assert_eq!(spec.ca_config, Some(cfg));
        let root = c.root_ca.unwrap();
        assert_eq!((root.ca_cert.as_slice(), root.ca_key.as_slice()), (&b"CERT"[..], &b""[..]));
        assert_eq!(root.ca_cert_hash, digest_string(b"CERT"));
        assert_eq!(root.join_tokens, Some(tokens));
        assert!(root.root_rotation.is_none());
    }

    #[test]
    fn external_cas_are_the_listed_ones_or_none() {
        let tokens = JoinTokens::default();
        let ext = ExternalCa { url: "https://ca".into(), ..Default::default() };
        let cfg = CaConfig { external_cas: vec![ext.clone()], ..Default::default() };
        assert_eq!(external_cas(&new_cluster("c", b"", b"", tokens.clone(), Some(cfg))), vec![ext]);
        assert!(external_cas(&new_cluster("c", b"", b"", tokens, None)).is_empty());
        assert!(external_cas(&Cluster::default()).is_empty());
    }
}
