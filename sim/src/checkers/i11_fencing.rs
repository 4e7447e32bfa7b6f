//! I11 (fencing): no store write from a deposed leader. Every leader term writes through a
//! handle fenced on its term (`store::FencedWriter`, the simulator's stand-in for the etcd
//! leader-key compare); a commit made under a term that is no longer current is refused before
//! it is applied. This checker sees every commit that is *not* made through a fence and flags
//! the writes only a leader may make — a node put into ISSUED, FAILED or ROTATE — so a server
//! that wrote its signing results or rotation marks past its writer (through its own store
//! handle) would be caught, whether or not it was deposed at the time.

use swarmca_store::{MemStore, Op};

use crate::shared::Shared;

/// The states before an unfenced commit of the nodes it updates (taken just before applying).
pub fn states_before(inner: &MemStore, ops: &[Op]) -> Vec<i32> {
    ops.iter()
        .map(|op| match op {
            Op::UpdateNode(n) => inner
                .view_and_watch_sync(swarmca_store::WatchFilter::Node(n.id.clone()))
                .0
                .nodes
                .first()
                .map_or(-1, super::state),
            _ => -1,
        })
        .collect()
}

/// An unfenced commit that was applied: `before` from [`states_before`].
pub fn check_unfenced(shared: &Shared, before: &[i32], ops: &[Op]) {
    for (op, from) in ops.iter().zip(before) {
        let Op::UpdateNode(n) = op else { continue };
        let to = super::state(n);
        if matches!(to, 3..=5) && *from != to {
            shared.violation(
                "I11",
                format!("node {}: state {from} -> {to} written outside any leader's fence", n.id),
            );
        }
    }
}
