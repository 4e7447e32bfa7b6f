//! What a manager runs for a term: the leader's signing loop and root-rotation reconciler, or a
//! follower's watch on the cluster object; both start the same way ([`start`]) and run under
//! the server's lifecycle ([`term`]). `crate::Manager` decides which, and when.

mod follow;
pub mod reconciler;
mod signing;
mod start;
mod term;
