//! I7: only the current, exact join token yields its role: every accepted join used a token
//! that was current for the role the node was created with, at some instant of the call; and
//! the current token is not refused: a join whose token had been current for a while before
//! the call and stayed current through it is never answered as if the token were wrong.

use std::time::Duration;

use crate::mirror::Mirror;
use crate::shared::{lock, Shared};

/// How far a server's token cache may lag a rotation (its watch is processed in the same
/// simulated instant unless the manager is paused, which also stops its RPCs).
const GRACE: Duration = Duration::from_secs(1);

/// How long a manager's token cache may lag the store: a manager cut off from the store (up
/// to 30 s) resumes its watch, or follows again, once the link is back.
const STALE_CACHE: Duration = Duration::from_secs(40);

/// Answers that say the caller's token (or identity) is wrong.
const REFUSALS: [tonic::Code; 4] = [
    tonic::Code::InvalidArgument,
    tonic::Code::PermissionDenied,
    tonic::Code::NotFound,
    tonic::Code::Unauthenticated,
];

pub fn check(m: &Mirror, shared: &Shared) {
    let spans = lock(&shared.tokens).clone();
    for j in lock(&shared.joins).iter() {
        let node = match &j.result {
            Ok(node) => node,
            Err(code) => {
                let current_throughout = spans.iter().any(|s| {
                    s.token == j.token
                        && s.from + STALE_CACHE <= j.start
                        && s.until.is_none_or(|u| u >= j.end + GRACE)
                });
                // A token that never was current, or stopped being current long before the
                // call, is refused as such: InvalidArgument (or the call did not get through).
                let long_invalid = !spans
                    .iter()
                    .any(|s| s.token == j.token && s.until.is_none_or(|u| u + STALE_CACHE >= j.start));
                if long_invalid
                    && *code != tonic::Code::InvalidArgument
                    && !crate::workload::TRANSPORT.contains(code)
                {
                    shared.violation(
                        "I7",
                        format!("client {} joined with an invalid token and was answered {code:?}, not InvalidArgument", j.client),
                    );
                }
                if current_throughout && REFUSALS.contains(code) {
                    shared.violation(
                        "I7",
                        format!(
                            "client {} was refused ({code:?}) with the {} token, current since {:?} and through the call ({:?}–{:?})",
                            j.client,
                            if spans.iter().any(|s| s.token == j.token && s.manager) { "manager" } else { "worker" },
                            spans.iter().find(|s| s.token == j.token).map(|s| s.from),
                            j.start,
                            j.end
                        ),
                    );
                }
                continue;
            }
        };
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
                    "client {} joined as {} ({:?}–{:?}) with a token not current for that role during the call \
                     (that token's spans: {:?})",
                    j.client,
                    if manager { "manager" } else { "worker" },
                    j.start,
                    j.end,
                    spans
                        .iter()
                        .filter(|s| s.token == j.token)
                        .map(|s| (if s.manager { "manager" } else { "worker" }, s.from, s.until))
                        .collect::<Vec<_>>()
                ),
            );
        }
    }
}
