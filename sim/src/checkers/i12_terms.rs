//! I12 (leader terms), judged on what the production `swarmca_server::Manager` reports
//! (`ManagerEvent`) against what the simulated election decided:
//!
//! - a manager runs the leader duties only of a term the election granted to it, one term at a
//!   time, and no two managers run the duties of one term;
//! - a term's duties stop once it is lost: a manager that is running (not paused, not dead) is
//!   told to stop within [`NOTICE`] of its term's loss (or of its resuming, if it was paused
//!   across it), and nothing of the term runs [`DRAIN`] later (jobs in flight finish; their
//!   writes are fenced). Checked every few seconds and whenever another term starts;
//! - every term start picks up the work pending in the store: a node that was waiting for a
//!   certificate when a term started, and is still waiting unchanged at the end of the run, was
//!   skipped by every term since.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use swarmca_server::ManagerEvent;

use crate::mirror::Mirror;
use crate::shared::{lock, now, Shared};

/// How long a running manager may take to notice its term is lost and stop its duties: its
/// lease task renews every third of the TTL and learns of the loss at the next renewal.
pub const NOTICE: Duration = Duration::from_secs(3);

/// How long the duties of a lost term may take to return once told to stop: signing jobs in
/// flight end their external CA request (5 s timeout) and their store calls first.
pub const DRAIN: Duration = Duration::from_secs(20);

/// The terms as the election granted them and the managers ran them.
pub struct Terms {
    shared: Arc<Shared>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Term → the manager the election granted it to.
    granted: BTreeMap<u64, usize>,
    /// Term → when the election took it away (expired or resigned).
    lost_at: BTreeMap<u64, Duration>,
    /// Per manager: the term whose duties run, and since when they were told to stop.
    active: Vec<Option<(u64, Option<Duration>)>>,
    /// Per manager: running (not paused, not dead), and since when.
    running: Vec<(bool, Duration)>,
    /// (term, manager, nodes waiting for a certificate when it started: (ID, version)).
    pending_at_start: Vec<(u64, usize, Vec<(String, u64)>)>,
    /// (manager, term) already reported.
    reported: BTreeSet<(usize, u64)>,
}

impl Terms {
    pub fn new(shared: Arc<Shared>, managers: usize) -> Arc<Terms> {
        let inner = Inner {
            active: vec![None; managers],
            running: vec![(true, Duration::ZERO); managers],
            ..Default::default()
        };
        Arc::new(Terms { shared, inner: Mutex::new(inner) })
    }

    /// The election granted `term` to `manager`.
    pub fn granted(&self, term: u64, manager: usize) {
        lock(&self.inner).granted.insert(term, manager);
    }

    /// The election took `term` away.
    pub fn lost(&self, term: u64, at: Duration) {
        lock(&self.inner).lost_at.insert(term, at);
    }

    /// Manager `i` is paused, killed, resumed or restarted.
    pub fn set_running(&self, i: usize, running: bool) {
        let mut s = lock(&self.inner);
        if let Some(r) = s.running.get_mut(i) {
            *r = (running, now());
        }
    }

    /// Manager `i` was killed: nothing of its process runs any more.
    pub fn killed(&self, i: usize) {
        self.set_running(i, false);
        if let Some(a) = lock(&self.inner).active.get_mut(i) {
            *a = None;
        }
    }

    /// What manager `i`'s `Manager` reported.
    pub fn on_event(&self, i: usize, ev: &ManagerEvent, mirror: &Mutex<Mirror>) {
        if self.shared.is_locked(i) {
            self.shared.violation("I14", format!("manager-{i} is locked, yet its manager runs: {ev:?}"));
        }
        match ev {
            ManagerEvent::Elected(t) => {
                self.shared.log.push(format!("manager-{i}: leader duties of term {t} start"));
                self.on_elected(i, *t, mirror);
            }
            ManagerEvent::Ending(t, why) => {
                self.shared.log.push(format!("manager-{i}: duties of term {t} end ({why:?})"));
                let matched = match lock(&self.inner).active.get_mut(i) {
                    Some(Some((term, ending))) if term == t => {
                        *ending = Some(now());
                        true
                    }
                    _ => false,
                };
                if !matched {
                    self.shared.violation(
                        "I12",
                        format!("manager-{i} ends the duties of term {t}, which it does not run"),
                    );
                }
            }
            ManagerEvent::Ended(t) => {
                self.shared.log.push(format!("manager-{i}: nothing of term {t} runs"));
                if let Some(a) = lock(&self.inner).active.get_mut(i) {
                    *a = None;
                }
            }
            ManagerEvent::FollowerEnded(e) => {
                self.shared.log.push(format!("manager-{i}: follower duties ended ({e:?}); restarting them"));
            }
            ManagerEvent::CampaignFailed(e) => {
                self.shared.log.push(format!("manager-{i}: campaign failed: {e}"))
            }
            ManagerEvent::ResignFailed(t, e) => {
                self.shared.log.push(format!("manager-{i}: could not resign term {t}: {e}"))
            }
            ManagerEvent::Following | ManagerEvent::Stopped => {}
        }
    }

    fn on_elected(&self, i: usize, t: u64, mirror: &Mutex<Mirror>) {
        let mut problems = Vec::new();
        {
            let mut s = lock(&self.inner);
            match s.granted.get(&t) {
                Some(&g) if g == i => {}
                g => problems.push(format!("manager-{i} runs the duties of term {t}, granted to {g:?}")),
            }
            if let Some(Some((old, _))) = s.active.get(i) {
                problems.push(format!("manager-{i} starts term {t}'s duties while term {old}'s still run"));
            }
            for (j, a) in s.active.iter().enumerate() {
                if j != i && a.is_some_and(|(term, _)| term == t) {
                    problems.push(format!("manager-{i} and manager-{j} both run the duties of term {t}"));
                }
            }
            if let Some(a) = s.active.get_mut(i) {
                *a = Some((t, None));
            }
        }
        for p in problems {
            self.shared.violation("I12", p);
        }
        self.check_now();
        let waiting: Vec<(String, u64)> = {
            let m = lock(mirror);
            crate::checkers::i5_liveness::waiting(&m, &self.shared)
                .into_iter()
                .filter_map(|id| m.nodes.get(&id).map(|n| (id, version(n))))
                .collect()
        };
        if !waiting.is_empty() && t > 1 && !self.shared.healing() {
            self.shared.coverage.hit("branch.leader_change_with_pending");
        }
        self.shared.log.push(format!("term {t}: {} node(s) pending at its start", waiting.len()));
        lock(&self.inner).pending_at_start.push((t, i, waiting));
    }

    /// Duties of lost terms that a running manager should have stopped by now.
    pub fn check_now(&self) {
        let t = now();
        let mut found = Vec::new();
        {
            let mut s = lock(&self.inner);
            let mut overdue = Vec::new();
            for (j, a) in s.active.iter().enumerate() {
                let (Some((term, ending)), Some(&(true, since))) = (a, s.running.get(j)) else { continue };
                let Some(&lost) = s.lost_at.get(term) else { continue };
                let from = lost.max(since);
                let late = match ending {
                    None => t.saturating_sub(from) > NOTICE,
                    Some(_) => t.saturating_sub(from) > NOTICE + DRAIN,
                };
                if late {
                    overdue.push((j, *term, lost, ending.is_some()));
                }
            }
            for (j, term, lost, told) in overdue {
                if s.reported.insert((j, term)) {
                    found.push(if told {
                        format!(
                            "manager-{j}: the duties of term {term} (lost at {lost:?}) still run at {t:?}"
                        )
                    } else {
                        format!(
                            "manager-{j} still runs the duties of term {term}, lost at {lost:?}, at {t:?}"
                        )
                    });
                }
            }
        }
        for f in found {
            self.shared.violation("I12", f);
        }
    }

    /// Nodes waiting when a term started that no term has touched since (run end).
    pub fn finish(&self, m: &Mirror) {
        let waiting: BTreeSet<String> =
            crate::checkers::i5_liveness::waiting(m, &self.shared).into_iter().collect();
        let s = lock(&self.inner);
        for (t, i, nodes) in &s.pending_at_start {
            let skipped: Vec<&String> = nodes
                .iter()
                .filter(|(id, v)| waiting.contains(id) && m.nodes.get(id).is_some_and(|n| version(n) == *v))
                .map(|(id, _)| id)
                .collect();
            if !skipped.is_empty() {
                self.shared.violation(
                    "I12",
                    format!(
                        "{} node(s) pending when term {t} started on manager-{i} were never picked up: {:?}",
                        skipped.len(),
                        skipped.iter().take(5).collect::<Vec<_>>()
                    ),
                );
            }
        }
    }
}

fn version(n: &swarmca_store::Node) -> u64 {
    n.meta.as_ref().and_then(|m| m.version.as_ref()).map_or(0, |v| v.index)
}
