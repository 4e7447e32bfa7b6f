//! What a manager runs for a term: the leader's signing loop, root-rotation reconciler and
//! housekeeping (blacklist pruning), or a follower's watch on the cluster object; both start
//! the same way ([`start`]) and run under the server's lifecycle ([`term`]). `crate::Manager`
//! decides which, and when.

mod follow;
mod housekeeping;
pub mod reconciler;
mod signing;
mod start;
mod term;
