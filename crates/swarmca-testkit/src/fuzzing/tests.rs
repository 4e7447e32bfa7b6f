//! Replays the committed seed corpus (`fuzz/seeds/<target>/`) and the regression inputs of
//! crashes found by fuzzing through the same asserting harnesses, without cargo-fuzz.

use super::*;
use swarmca_core::fuzzing::seeds::{corpus as seeds, replay};

/// The server harnesses share one runtime per process: the tests that use it take turns, so
/// that one can count the tasks another leaves behind.
fn turn() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn proto_requests_seeds_pass() {
    let _turn = turn();
    replay("proto_requests", proto_requests);
}

#[test]
fn cfssl_response_seeds_pass() {
    replay("cfssl_response", cfssl_response);
}

#[test]
fn issuance_ops_seeds_pass() {
    let _turn = turn();
    replay("issuance_ops", issuance_ops);
}

#[test]
fn issuance_ops_seeds_reach_issuance_and_conflicts() {
    // The invariants hold vacuously unless the seeds make the leader issue certificates and
    // the injected conflicts fire before signing writes.
    let _turn = turn();
    let mut total = ops::Reached::default();
    for (_, data) in seeds("issuance_ops") {
        let r = ops::run(&data);
        total.issued += r.issued;
        total.conflicts += r.conflicts;
        total.joined += r.joined;
        total.new_processes += r.new_processes;
    }
    assert!(
        total.joined > 0 && total.issued > 0 && total.conflicts > 0 && total.new_processes > 0,
        "{total:?}"
    );
}

#[test]
fn no_task_outlives_its_input() {
    // A task left running by one input would change the timing of the next, and a crash
    // found in a campaign would not replay alone.
    let _turn = turn();
    type Harness = fn(&[u8]);
    let runs: [(&str, Harness); 2] = [("proto_requests", proto_requests), ("issuance_ops", issuance_ops)];
    for (target, run) in runs {
        for (name, data) in seeds(target) {
            run(&data);
            let alive = super::harness::runtime().metrics().num_alive_tasks();
            assert_eq!(alive, 0, "{name}: {alive} tasks still alive after the input");
        }
    }
}
