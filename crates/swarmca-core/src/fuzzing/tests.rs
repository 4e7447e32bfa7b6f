//! Replays the committed seed corpus (`fuzz/seeds/<target>/`) and the regression inputs of every
//! crash found by fuzzing through the same asserting harnesses, without cargo-fuzz.

use super::seeds::{corpus as seeds, replay};
use super::*;

#[test]
fn csr_der_seeds_pass() {
    replay("csr_der", csr_der);
}

#[test]
fn csr_pem_seeds_pass() {
    replay("csr_pem", csr_pem);
}

#[test]
fn join_token_seeds_pass() {
    replay("join_token", join_token);
}

#[test]
fn accepted_seed_csrs_exist() {
    // The harness only reaches the differential check on accepted CSRs; make sure the corpus
    // holds some.
    let accepted = seeds("csr_der").iter().filter(|(_, d)| parse_csr_der(d).is_ok()).count();
    assert!(accepted >= 3, "only {accepted} seed CSRs are accepted");
}
