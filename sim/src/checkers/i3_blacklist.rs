//! I3: nothing is issued to, or accepted from, a blacklisted (removed) identity: no node write
//! for a blacklisted ID, no renewal accepted after the node's removal, and a removed node's
//! certificate not even taken as an identity (its renewal is refused as a tokenless join).
//! The manager unlock key goes to managers only, and only while managers are autolocked: an
//! answer carries the key of the cluster version it names iff that version had autolock on.

use super::WriteCtx;
use crate::shared::{lock, Shared};

pub fn check_write(ctx: &WriteCtx<'_>) {
    let blacklisted = ctx.cluster.is_some_and(|c| c.blacklisted_certificates.contains_key(&ctx.new.id));
    if blacklisted {
        ctx.shared
            .violation("I3", format!("write to blacklisted node {} (state {})", ctx.new.id, ctx.state()));
    }
}

pub fn check_unlock_answers(m: &crate::mirror::Mirror, shared: &Shared) {
    for (node, version, key) in lock(&shared.unlock_answers).iter() {
        let Some((autolock, want)) = m.cluster_versions.get(version) else {
            shared.violation(
                "I3",
                format!("GetUnlockKey for {node} named cluster version {version}, never written"),
            );
            continue;
        };
        let want: &[u8] = if *autolock { want } else { &[] };
        if key.as_slice() != want {
            shared.violation(
                "I3",
                format!(
                    "GetUnlockKey for {node} at cluster version {version} (autolock {autolock}) gave {} key",
                    if key.is_empty() { "no" } else { "the wrong" }
                ),
            );
        } else if *autolock {
            shared.coverage.hit("branch.unlock_key_given_autolocked");
        }
    }
}

pub fn check_renewals(shared: &Shared) {
    let removed = lock(&shared.removed).clone();
    for (node, start, ok) in lock(&shared.unlock_calls).iter() {
        let Some((_, at)) = removed.iter().find(|(id, _)| id == node) else { continue };
        if *ok && start > at {
            shared.violation(
                "I3",
                format!("GetUnlockKey answered a removed manager {node} at {start:?} (removed at {at:?})"),
            );
        }
        if !*ok && start > at {
            shared.coverage.hit("branch.unlock_key_refused_removed");
        }
    }
    for r in lock(&shared.renewals).iter() {
        let Some((_, at)) = removed.iter().find(|(id, _)| *id == r.node) else { continue };
        if r.ok && r.start > *at {
            shared.violation(
                "I3",
                format!(
                    "renewal of node {} accepted at {:?}, after its removal at {at:?}",
                    r.node, r.rpc_end
                ),
            );
        }
        // A blacklisted certificate authenticates nobody: the call is a join without a token
        // (InvalidArgument), as in SwarmKit. NotFound, say, means the certificate was still
        // taken as the node's identity and only the missing node object stopped the renewal.
        let refused_as_join = matches!(r.code, Some(tonic::Code::InvalidArgument))
            || r.code.is_some_and(|c| crate::workload::TRANSPORT.contains(&c));
        if r.start > *at && !r.ok && !refused_as_join {
            shared.violation(
                "I3",
                format!(
                    "renewal by removed node {} at {:?} (removed at {at:?}) was refused {:?}, \
                     not as a join without a token (InvalidArgument)",
                    r.node, r.start, r.code
                ),
            );
        }
        if r.start > *at && r.code == Some(tonic::Code::InvalidArgument) {
            shared.coverage.hit("branch.removed_node_renewal_refused");
        }
        if r.start <= *at && *at <= r.end {
            shared.coverage.hit("branch.renewal_racing_removal");
        }
    }
}
