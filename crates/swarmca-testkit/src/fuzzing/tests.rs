//! Replays the committed seed corpus (`fuzz/seeds/<target>/`) and the regression inputs of
//! crashes found by fuzzing through the same asserting harnesses, without cargo-fuzz.

use super::*;
use swarmca_core::fuzzing::seeds::{corpus as seeds, replay};

#[test]
fn proto_requests_seeds_pass() {
    replay("proto_requests", proto_requests);
}

#[test]
fn cfssl_response_seeds_pass() {
    replay("cfssl_response", cfssl_response);
}

#[test]
fn issuance_ops_seeds_pass() {
    replay("issuance_ops", issuance_ops);
}

#[test]
fn issuance_ops_seeds_reach_issuance_and_conflicts() {
    // The invariants hold vacuously unless the seeds make the leader issue certificates and
    // the injected conflicts fire before signing writes.
    let mut total = ops::Reached::default();
    for (_, data) in seeds("issuance_ops") {
        let r = ops::run(&data);
        total.issued += r.issued;
        total.conflicts += r.conflicts;
        total.joined += r.joined;
    }
    assert!(total.joined > 0 && total.issued > 0 && total.conflicts > 0, "{total:?}");
}
