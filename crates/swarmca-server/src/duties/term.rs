//! A term's lifecycle on the server: `run` (leader duties, writing through the store the term
//! was won with) or `run_follower`, until `stop` or the drop of the future. One term runs at a
//! time; a guard restores `Stopped` on every exit path, so a second `run` after a cancelled one
//! is fine (the original panicked on a closed channel).

use std::sync::Arc;

use swarmca_store::Store;
use tracing::{error, info};

use super::{follow, signing};
use crate::error::ServerError;
use crate::server::{CaServer, Phase, RunCancel};
use crate::signal::Signal;

impl CaServer {
    /// Runs the CA until [`CaServer::stop`] is called or the returned future is dropped: loads
    /// the cluster's root CA and join tokens, signs what a previous leader left pending, then
    /// follows store events. Fails at once if already running.
    pub async fn run(&self) -> Result<(), ServerError> {
        self.run_as(Some(self.inner.deps.store.clone())).await
    }

    /// As [`CaServer::run`], but the signing loop and the root-rotation reconciler read and
    /// write through `writer` instead of the server's store: under high availability, a
    /// handle on the same store that fences every write on the leadership this term was won
    /// with, so that a deposed leader can never write (its commits fail and nothing is
    /// applied). The caller stops the server when it loses the leadership.
    pub async fn run_with_writer(&self, writer: Arc<dyn Store>) -> Result<(), ServerError> {
        self.run_as(Some(writer)).await
    }

    /// Serves the RPCs of a *follower* manager until [`CaServer::stop`]: loads and follows the
    /// cluster's root CA and join tokens, accepts joins and renewals into the shared store and
    /// answers status from it, but signs nothing — the leader's [`CaServer::run`] does. Same
    /// lifecycle rules as `run`; a follower becomes leader with `stop` then `run`.
    pub async fn run_follower(&self) -> Result<(), ServerError> {
        self.run_as(None).await
    }

    /// Runs as leader writing through `writer`, or as a follower when `None`.
    async fn run_as(&self, writer: Option<Arc<dyn Store>>) -> Result<(), ServerError> {
        let (cancel_rx, generation) = {
            let mut life = self.life();
            if !matches!(life.phase, Phase::Stopped) {
                return Err(ServerError::AlreadyRunning);
            }
            life.generation += 1;
            let cancel = Signal::new(false);
            life.phase = Phase::Running { cancel: cancel.clone(), generation: life.generation };
            (cancel, life.generation)
        };
        let _guard = RunGuard { server: self.clone(), generation, cancel: cancel_rx.clone() };
        info!(cluster = %self.inner.cfg.cluster_id, leader = writer.is_some(), "CA server starting");
        let r = match writer {
            Some(writer) => signing::run_loop(self.clone(), cancel_rx, writer).await,
            None => follow::follow_loop(self.clone(), cancel_rx).await,
        };
        if let Err(e) = &r {
            error!(error = %e, "CA server run loop ended with an error");
        }
        r
    }
}

/// Restores `Stopped` when `run` returns or is dropped; a dropped `run` also cancels the jobs
/// of its term (they check the flag before writing).
struct RunGuard {
    server: CaServer,
    generation: u64,
    cancel: RunCancel,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.cancel.set(true);
        let mut life = self.server.life();
        let ours = match &life.phase {
            Phase::Running { generation, .. } => *generation == self.generation,
            Phase::Stopping => true,
            Phase::Stopped => false,
        };
        if ours {
            life.phase = Phase::Stopped;
            life.join_tokens = None;
        }
        self.server.inner.ready_tx.set(false);
        self.server.inner.stopped_tx.set(self.generation);
    }
}
