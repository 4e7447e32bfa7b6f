//! Shrinking a failing run to a small scenario that still fails (`swarmca-sim --shrink SEED`).
//!
//! A seed's run is replayed as a scenario: the seed (which draws the workload and every option
//! the scenario does not name) and the schedule of the faults its nemesis injected. Replaying
//! that full schedule is the seed's run exactly (see [`crate::nemesis::run`]). Shrinking then
//! cuts the schedule by delta debugging (Zeller's *ddmin*: drop halves, then quarters, …, of the
//! faults while the run still fails), cuts the workload (fewer clients and managers, no store
//! faults, no root rotation, no external CA, a shorter safety phase: each kept only if the run
//! still fails), and cuts the schedule once more. A candidate "still fails" when it breaks one of
//! the invariants the original run broke (a different failure is not the one being explained).
//! Every candidate is a deterministic run, so the scenario printed at the end fails on every
//! replay, with the same event log.
//!
//! The search itself is pure and takes the judge as a function, so it is tested here without
//! the simulator.

use std::time::Duration;

use crate::options::{FaultKind, SimOptions};

/// A 1-minimal subsequence of `items` (removing any one more item makes `fails` false), found by
/// delta debugging; `fails(items)` is assumed true. Order is kept.
pub fn ddmin<T: Clone>(items: &[T], fails: &mut dyn FnMut(&[T]) -> bool) -> Vec<T> {
    let mut cur = items.to_vec();
    if cur.is_empty() {
        return cur;
    }
    if fails(&[]) {
        return Vec::new();
    }
    let mut n = 2usize;
    while cur.len() >= 2 {
        let n_now = n.min(cur.len());
        let bounds: Vec<(usize, usize)> =
            (0..n_now).map(|i| (i * cur.len() / n_now, (i + 1) * cur.len() / n_now)).collect();
        let mut next = None;
        // A chunk alone that still fails: continue from it.
        for &(a, b) in &bounds {
            let sub = cur.get(a..b).unwrap_or_default().to_vec();
            if fails(&sub) {
                next = Some((sub, 2));
                break;
            }
        }
        // With two chunks, each complement is the other chunk: already tried.
        if next.is_none() && n_now > 2 {
            for &(a, b) in &bounds {
                let mut comp = cur.get(..a).unwrap_or_default().to_vec();
                comp.extend_from_slice(cur.get(b..).unwrap_or_default());
                if fails(&comp) {
                    next = Some((comp, (n_now - 1).max(2)));
                    break;
                }
            }
        }
        match next {
            Some((c, k)) => {
                cur = c;
                n = k;
            }
            None if n_now >= cur.len() => break,
            None => n = (n_now * 2).min(cur.len()),
        }
    }
    cur
}

/// The invariants a run's violations name (`VIOLATION I4: …` → `I4`); a crash is `crash`.
pub fn signature(violations: &[String], crashed: bool) -> Vec<String> {
    let mut ids: Vec<String> = violations
        .iter()
        .filter_map(|v| v.strip_prefix("VIOLATION ").and_then(|r| r.split(':').next()).map(str::to_string))
        .collect();
    if crashed {
        ids.push("crash".into());
    }
    ids.sort();
    ids.dedup();
    ids
}

/// What shrinking found.
#[derive(Debug, Clone)]
pub struct Shrunk {
    /// The scenario that still fails.
    pub options: SimOptions,
    /// Faults in the seed's own schedule.
    pub original_faults: usize,
    /// Candidate runs tried.
    pub runs: usize,
}

/// Shrinks `original` (a seed's options) with its recorded `faults`; `fails` runs a scenario
/// and says whether it still fails the same way; `note` hears each step kept.
pub fn shrink(
    original: &SimOptions,
    faults: &[(Duration, FaultKind)],
    fails: &mut dyn FnMut(&SimOptions) -> bool,
    note: &mut dyn FnMut(&str),
) -> Shrunk {
    let mut runs = 0usize;
    let mut judge = |o: &SimOptions| {
        runs += 1;
        fails(o)
    };
    let mut best = SimOptions { schedule: Some(faults.to_vec()), ..original.clone() };
    cut_faults(&mut best, &mut judge, note);
    for step in workload_cuts() {
        // A cut may be tried several times (halving the clients until it no longer fails).
        while let Some(candidate) = (step.cut)(&best) {
            if !judge(&candidate) {
                break;
            }
            best = candidate;
            note(&format!("kept: {} ({})", step.what, describe(&best)));
        }
    }
    cut_faults(&mut best, &mut judge, note);
    Shrunk { options: best, original_faults: faults.len(), runs }
}

fn cut_faults(best: &mut SimOptions, judge: &mut dyn FnMut(&SimOptions) -> bool, note: &mut dyn FnMut(&str)) {
    let faults = best.schedule.clone().unwrap_or_default();
    let base = best.clone();
    let kept = ddmin(&faults, &mut |sub| judge(&SimOptions { schedule: Some(sub.to_vec()), ..base.clone() }));
    if kept.len() < faults.len() {
        note(&format!("kept: {} of {} faults", kept.len(), faults.len()));
    }
    best.schedule = Some(kept);
}

/// One way to make the workload smaller: the next candidate, or `None` when there is none.
struct Cut {
    what: &'static str,
    cut: fn(&SimOptions) -> Option<SimOptions>,
}

fn workload_cuts() -> Vec<Cut> {
    vec![
        Cut {
            what: "half the clients",
            cut: |o| (o.clients > 1).then(|| SimOptions { clients: o.clients / 2, ..o.clone() }),
        },
        Cut {
            what: "one client less",
            cut: |o| (o.clients > 1).then(|| SimOptions { clients: o.clients - 1, ..o.clone() }),
        },
        Cut {
            what: "one manager less",
            cut: |o| (o.managers > 1).then(|| SimOptions { managers: o.managers - 1, ..o.clone() }),
        },
        Cut {
            what: "no injected sequence conflicts",
            cut: |o| (o.p_conflict > 0.0).then(|| SimOptions { p_conflict: 0.0, ..o.clone() }),
        },
        Cut {
            what: "no transient store errors",
            cut: |o| (o.p_store_error > 0.0).then(|| SimOptions { p_store_error: 0.0, ..o.clone() }),
        },
        Cut {
            what: "no slow commits",
            cut: |o| (o.p_slow_commit > 0.0).then(|| SimOptions { p_slow_commit: 0.0, ..o.clone() }),
        },
        Cut {
            what: "no root rotation",
            cut: |o| o.root_rotation.then(|| SimOptions { root_rotation: false, ..o.clone() }),
        },
        Cut {
            what: "no external CA",
            cut: |o| {
                o.external_ca.then(|| SimOptions { external_ca: false, external_only: false, ..o.clone() })
            },
        },
        Cut {
            what: "a shorter safety phase",
            cut: |o| {
                // Just past the last fault (at least a minute); each cut halves what is left.
                let last = o.schedule.iter().flatten().map(|(t, _)| *t).max().unwrap_or_default();
                let floor = (last + Duration::from_secs(30)).max(Duration::from_secs(60));
                let floor = Duration::from_secs(floor.as_secs() + u64::from(floor.subsec_nanos() > 0));
                // Whole seconds: a scenario names the safety phase in seconds.
                let shorter = floor.max(Duration::from_secs(o.safety.as_secs().div_ceil(2)));
                (shorter < o.safety).then(|| SimOptions { safety: shorter, ..o.clone() })
            },
        },
    ]
}

/// The knobs a shrink changes, for its progress lines.
fn describe(o: &SimOptions) -> String {
    format!(
        "managers={} clients={} safety={}s conflict={:.3} store_err={:.3} slow={:.3} rotation={} extca={}",
        o.managers,
        o.clients,
        o.safety.as_secs(),
        o.p_conflict,
        o.p_store_error,
        o.p_slow_commit,
        o.root_rotation,
        o.external_ca
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddmin_finds_the_faults_that_matter() {
        // Fails when both 3 and 11 are present, among 16.
        let items: Vec<u32> = (0..16).collect();
        let mut runs = 0;
        let kept = ddmin(&items, &mut |s| {
            runs += 1;
            s.contains(&3) && s.contains(&11)
        });
        assert_eq!(kept, vec![3, 11]);
        assert!(runs < 60, "{runs} runs");
        // A single cause, and none at all.
        assert_eq!(ddmin(&items, &mut |s| s.contains(&7)), vec![7]);
        assert_eq!(ddmin(&items, &mut |_| true), Vec::<u32>::new());
        // Three scattered causes, order kept.
        assert_eq!(ddmin(&items, &mut |s| [1, 8, 15].iter().all(|x| s.contains(x))), vec![1, 8, 15]);
    }

    #[test]
    fn ddmin_result_is_one_minimal() {
        // Fails when at least two of the even items are present: any two will do, and removing
        // either of the two kept must make it pass.
        let items: Vec<u32> = (0..12).collect();
        let mut fails = |s: &[u32]| s.iter().filter(|x| *x % 2 == 0).count() >= 2;
        let kept = ddmin(&items, &mut fails);
        assert_eq!(kept.len(), 2);
        for i in 0..kept.len() {
            let mut less = kept.clone();
            less.remove(i);
            assert!(!fails(&less));
        }
    }

    #[test]
    fn signature_names_the_invariants() {
        let v = vec![
            "VIOLATION I4: a certificate for another key".to_string(),
            "VIOLATION I12: stale".to_string(),
            "VIOLATION I4: again".to_string(),
        ];
        assert_eq!(signature(&v, false), vec!["I12", "I4"]);
        assert_eq!(signature(&[], true), vec!["crash"]);
    }

    #[test]
    fn shrink_cuts_faults_and_workload_while_the_failure_stays() {
        // A made-up failure: it needs a leader kill among the faults and at least three clients.
        let mut o = SimOptions::from_seed(5);
        o.clients = 20;
        o.p_conflict = 0.1;
        o.safety = Duration::from_secs(600);
        let faults: Vec<(Duration, FaultKind)> = (0..24u64)
            .map(|i| {
                let k = if i == 17 { FaultKind::LeaderKill } else { FaultKind::Clog };
                (Duration::from_secs(10 + i * 20), k)
            })
            .collect();
        let mut fails = |c: &SimOptions| {
            c.clients >= 3 && c.schedule.iter().flatten().any(|(_, k)| *k == FaultKind::LeaderKill)
        };
        let mut notes = Vec::new();
        let s = shrink(&o, &faults, &mut fails, &mut |n| notes.push(n.to_string()));
        assert_eq!(s.options.schedule, Some(vec![(Duration::from_secs(350), FaultKind::LeaderKill)]));
        assert_eq!(s.options.clients, 3);
        assert_eq!(s.options.p_conflict, 0.0);
        // The safety phase ends a little after the last fault kept.
        assert_eq!(s.options.safety, Duration::from_secs(380));
        assert_eq!(s.original_faults, 24);
        assert!(fails(&s.options) && s.runs > 0 && !notes.is_empty());
    }
}
