//! I7: only the current, exact join token yields its role: every accepted join used a token
//! that was current for the role the node was created with, at some instant of the call.

use std::time::Duration;

use crate::mirror::Mirror;
use crate::shared::{lock, Shared};

/// How far a server's token cache may lag a rotation (its watch is processed in the same
/// simulated instant unless the manager is paused, which also stops its RPCs).
const GRACE: Duration = Duration::from_secs(1);

pub fn check(m: &Mirror, shared: &Shared) {
    let spans = lock(&shared.tokens).clone();
    for j in lock(&shared.joins).iter() {
        let Ok(node) = &j.result else { continue };
        let Some(role) = m.created_role.get(node) else {
            // Created and removed before the mirror saw it: impossible, events are ordered.
            shared.violation("I7", format!("join returned node {node} that was never written"));
            continue;
        };
        let manager = *role == 1;
        let valid = spans.iter().any(|s| {
            s.token == j.token
                && s.manager == manager
                && s.from <= j.end
                && s.until.is_none_or(|u| u + GRACE >= j.start)
        });
        if !valid {
            shared.violation(
                "I7",
                format!(
                    "client {} joined as {} with a token not current for that role during the call",
                    j.client,
                    if manager { "manager" } else { "worker" }
                ),
            );
        }
    }
}
