//! Scenarios as data: proptest generates a cluster shape, store-fault rates and an explicit
//! fault schedule, runs it in the simulator, and on failure shrinks it to a minimal schedule,
//! printed as a `--scenario` string for `scripts/sim --scenario '…'`.
//!
//! Runs only under `--cfg madsim` (scripts/test: `cargo test -p swarmca-sim --test scenarios`
//! with the simulation RUSTFLAGS). Case count: `PROPTEST_CASES` (default 6, to bound CI time).

#![cfg(madsim)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use swarmca_sim::options::{FaultKind, SimOptions};
use swarmca_sim::run::{run_with, warm_up};

fn scenario() -> impl Strategy<Value = SimOptions> {
    (
        any::<u64>(),
        1usize..=4,
        1usize..=8,
        0.0f64..0.3,
        0.0f64..0.05,
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec((0u64..120, prop::sample::select(FaultKind::ALL.to_vec())), 0..12),
    )
        .prop_map(|(seed, managers, clients, conflict, store_err, extca, only, mut faults)| {
            faults.sort_by_key(|(t, _)| *t);
            let faults = faults.into_iter().map(|(t, k)| (Duration::from_secs(t), k)).collect();
            let mut o = SimOptions::from_seed(seed);
            o.managers = managers;
            o.clients = clients;
            o.safety = Duration::from_secs(120);
            o.liveness_budget = Duration::from_secs(300);
            o.p_conflict = conflict;
            o.p_store_error = store_err;
            o.external_ca = extca;
            o.external_only = only;
            o.schedule = Some(faults);
            o
        })
}

/// Runs a scenario on a fresh thread and runtime; the violations, or a crash.
fn run(o: &SimOptions) -> Result<(), String> {
    let o = o.clone();
    let r = std::thread::spawn(move || {
        let mut rt = madsim::runtime::Runtime::with_seed_and_config(o.seed, madsim::Config::default());
        rt.set_time_limit(o.safety + o.liveness_budget + Duration::from_secs(900));
        rt.block_on(run_with(o, false))
    })
    .join()
    .map_err(|_| "crashed".to_string())?;
    if r.violations.is_empty() {
        Ok(())
    } else {
        Err(r.violations.join("; "))
    }
}

#[test]
fn generated_scenarios_keep_every_invariant() {
    std::thread::spawn(|| {
        madsim::runtime::Runtime::with_seed_and_config(0, madsim::Config::default()).block_on(warm_up())
    })
    .join()
    .unwrap();
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    let seed = std::env::var("SWARMCA_PROPTEST_SEED").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(1);
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config { cases, max_shrink_iters: 64, failure_persistence: None, ..Config::default() },
        TestRng::from_seed(RngAlgorithm::ChaCha, &key),
    );
    let result = runner.run(&scenario(), |o| {
        run(&o).map_err(|e| {
            TestCaseError::fail(format!("{e}\n  replay: scripts/sim --scenario '{}'", o.to_scenario()))
        })
    });
    if let Err(e) = result {
        panic!("minimal failing scenario: {e}");
    }
}

/// The `#[madsim::test]` entry: one seed of the default scenario, taken from madsim's own
/// environment (`MADSIM_TEST_SEED`, `MADSIM_TEST_NUM`, `MADSIM_TEST_JOBS`,
/// `MADSIM_TEST_CHECK_DETERMINISM=1`). Without `MADSIM_TEST_SEED`, madsim draws a new seed each
/// run and prints it on failure; CI pins it. `scripts/sim` is the sweep with coverage.
#[madsim::test]
async fn default_scenario_seed_from_the_madsim_environment() {
    let report = swarmca_sim::run::run_seed(false).await;
    assert!(
        report.violations.is_empty(),
        "seed {} violated: {:#?}\nreplay: scripts/sim --seed {} --verbose",
        report.seed,
        report.violations,
        report.seed
    );
    assert!(report.sim_time >= Duration::from_secs(600), "the whole run happened: {:?}", report.sim_time);
}
