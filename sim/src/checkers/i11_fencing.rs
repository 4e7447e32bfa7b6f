//! I11 (fencing): no store write from a deposed leader. Every leader term writes through a
//! handle fenced on its term (`store::FencedWriter`, the simulator's stand-in for the etcd
//! leader-key compare); a commit made under a term that is no longer current is refused before
//! it is applied. This checker sees every commit that is *not* made through a fence and flags
//! the writes only a leader may make — a node put into ISSUED, FAILED or ROTATE — so a server
//! that wrote its signing results or rotation marks past its writer (through its own store
//! handle) would be caught, whether or not it was deposed at the time. The same holds for the
//! completion of a root rotation (the cluster's root certificate replaced): only the leader's
//! reconciler does it (the admin starts and aborts rotations; neither changes the root).

use swarmca_store::{MemStore, Op};

use crate::shared::Shared;

/// What an unfenced commit's ops found in the store just before being applied.
pub enum Before {
    /// The issuance state of the node an `UpdateNode` writes (-1 if missing).
    Node(i32),
    /// The root certificate of the cluster an `UpdateCluster` writes.
    Cluster(Vec<u8>),
    Other,
}

/// What the store held before an unfenced commit (taken just before applying).
pub fn states_before(inner: &MemStore, ops: &[Op]) -> Vec<Before> {
    ops.iter()
        .map(|op| match op {
            Op::UpdateNode(n) => Before::Node(
                inner
                    .view_and_watch_sync(swarmca_store::WatchFilter::Node(n.id.clone()))
                    .0
                    .nodes
                    .first()
                    .map_or(-1, super::state),
            ),
            Op::UpdateCluster(c) => Before::Cluster(
                inner
                    .view_and_watch_sync(swarmca_store::WatchFilter::Cluster(c.id.clone()))
                    .0
                    .clusters
                    .first()
                    .and_then(|c| c.root_ca.as_ref())
                    .map(|r| r.ca_cert.clone())
                    .unwrap_or_default(),
            ),
            _ => Before::Other,
        })
        .collect()
}

/// An unfenced commit that was applied: `before` from [`states_before`].
pub fn check_unfenced(shared: &Shared, before: &[Before], ops: &[Op]) {
    for (op, before) in ops.iter().zip(before) {
        match (op, before) {
            (Op::UpdateNode(n), Before::Node(from)) => {
                let to = super::state(n);
                if *from != to && super::own_certificate_write(Some(*from), n) {
                    // A manager's start writes its own node so (noted by the store; I4 checks,
                    // at the end, that it is the node a manager started as).
                    continue;
                }
                if matches!(to, 3..=5) && *from != to {
                    shared.violation(
                        "I11",
                        format!("node {}: state {from} -> {to} written outside any leader's fence", n.id),
                    );
                }
            }
            (Op::UpdateCluster(c), Before::Cluster(root)) => {
                let now = c.root_ca.as_ref().map(|r| r.ca_cert.as_slice()).unwrap_or_default();
                if !root.is_empty() && now != root.as_slice() {
                    shared.violation(
                        "I11",
                        format!("cluster {}: root certificate replaced outside any leader's fence", c.id),
                    );
                }
            }
            _ => {}
        }
    }
}
