//! Replays the committed seed corpus (`fuzz/seeds/<target>/`) and the regression inputs of every
//! crash found by fuzzing through the same asserting harnesses, without cargo-fuzz.

use super::*;

/// Every file of `fuzz/seeds/<target>/` (there must be some).
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = format!("{}/../../fuzz/seeds/{target}", env!("CARGO_MANIFEST_DIR"));
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {dir}");
    out
}

fn replay(target: &str, f: fn(&[u8])) {
    for (name, data) in seeds(target) {
        let r = std::panic::catch_unwind(|| f(&data));
        assert!(r.is_ok(), "{target}: seed {name} fails the harness");
    }
}

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
