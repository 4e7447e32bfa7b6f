//! Every knob of a run, derived from its seed (swarm testing: each seed enables a different
//! mix of faults at different rates), and printed before the run starts.

use std::fmt;
use std::time::Duration;

/// A small deterministic generator for deriving options outside the simulator.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    /// A rate that is 0 with probability `off`, else uniform in [0, max].
    fn rate(&mut self, off: f64, max: f64) -> f64 {
        if self.chance(off) {
            0.0
        } else {
            self.unit() * max
        }
    }
}

/// The options of one simulated run.
#[derive(Debug, Clone, PartialEq)]
pub struct SimOptions {
    /// The seed everything derives from.
    pub seed: u64,
    /// Manager nodes sharing the store (3–5).
    pub managers: usize,
    /// Client nodes joining and renewing (20–28).
    pub clients: usize,
    /// Length of the safety phase (faults on).
    pub safety: Duration,
    /// Simulated time the liveness phase may take to converge after healing.
    pub liveness_budget: Duration,
    /// The CA's retry ticker.
    pub retry_interval: Duration,
    /// Mean time between a client's renewals.
    pub renew_interval: Duration,
    /// Share of clients joining as managers.
    pub manager_share: f64,
    /// F1: probability that a node update meets an injected sequence conflict.
    pub p_conflict: f64,
    /// F1: probability that a commit fails with a transient store error.
    pub p_store_error: f64,
    /// F1: probability that a commit is slow (up to 2 s).
    pub p_slow_commit: f64,
    /// Mean time between nemesis actions (F2, F4, F8, F9).
    pub fault_interval: Duration,
    /// F2: leader changes by graceful step-down / kill / pause enabled.
    pub leader_graceful: bool,
    /// F2: leader kill enabled.
    pub leader_kill: bool,
    /// F2: leader pause enabled.
    pub leader_pause: bool,
    /// F4: clogs between clients and managers enabled.
    pub clogs: bool,
    /// F8: clock skew and jumps on managers, at most this much.
    pub max_clock_skew: Duration,
    /// F9: long partitions of one client enabled.
    pub long_partitions: bool,
    /// F5: probability a join is sent twice.
    pub p_duplicate_join: f64,
    /// F5: probability a renewal races a second renewal with another key.
    pub p_concurrent_renew: f64,
    /// F5: probability a status poll uses a very short deadline (a cancelled poll).
    pub p_cancel_poll: f64,
    /// Probability a join carries a garbage CSR.
    pub p_garbage_csr: f64,
    /// Probability a join carries a wrong or stale token.
    pub p_bad_token: f64,
    /// Mean time between admin actions (rotate, remove, promote/demote, expiry).
    pub admin_interval: Duration,
    /// Sign through the fake external CFSSL CA.
    pub external_ca: bool,
    /// ...with no CA key in the cluster (external-only signing).
    pub external_only: bool,
    /// F3: external-CA outages and bad answers.
    pub extca_faults: bool,
}

impl SimOptions {
    /// The options of `seed`.
    pub fn from_seed(seed: u64) -> SimOptions {
        let mut r = SplitMix64(seed ^ 0x5357_4152_4d43_4121);
        SimOptions {
            seed,
            managers: r.range(3, 5) as usize,
            clients: r.range(20, 28) as usize,
            safety: Duration::from_secs(600),
            liveness_budget: Duration::from_secs(300),
            retry_interval: Duration::from_secs(r.range(1, 10)),
            renew_interval: Duration::from_secs(r.range(30, 120)),
            manager_share: r.unit() * 0.3,
            p_conflict: r.rate(0.2, 0.3),
            p_store_error: r.rate(0.4, 0.05),
            p_slow_commit: r.rate(0.5, 0.05),
            fault_interval: Duration::from_secs(r.range(10, 60)),
            leader_graceful: r.chance(0.8),
            leader_kill: r.chance(0.7),
            leader_pause: r.chance(0.5),
            clogs: r.chance(0.6),
            max_clock_skew: if r.chance(0.5) { Duration::from_secs(r.range(1, 300)) } else { Duration::ZERO },
            long_partitions: r.chance(0.3),
            p_duplicate_join: r.rate(0.3, 0.2),
            p_concurrent_renew: r.rate(0.3, 0.2),
            p_cancel_poll: r.rate(0.3, 0.2),
            p_garbage_csr: r.rate(0.3, 0.1),
            p_bad_token: r.rate(0.3, 0.2),
            admin_interval: Duration::from_secs(r.range(15, 90)),
            external_ca: r.chance(0.5),
            external_only: r.chance(0.4),
            extca_faults: r.chance(0.7),
        }
    }
}

impl SimOptions {
    /// A short scenario with every fault on (see `run::warm_up`).
    pub fn warm_up(seed: u64) -> SimOptions {
        SimOptions {
            managers: 3,
            clients: 4,
            safety: Duration::from_secs(60),
            liveness_budget: Duration::from_secs(60),
            p_conflict: 0.2,
            p_store_error: 0.05,
            p_slow_commit: 0.05,
            fault_interval: Duration::from_secs(10),
            leader_graceful: true,
            leader_kill: true,
            leader_pause: true,
            clogs: true,
            p_garbage_csr: 0.2,
            p_bad_token: 0.2,
            admin_interval: Duration::from_secs(10),
            renew_interval: Duration::from_secs(10),
            external_ca: true,
            external_only: false,
            extca_faults: true,
            ..SimOptions::from_seed(seed)
        }
    }
}

impl fmt::Display for SimOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "managers={} clients={} safety={}s liveness={}s retry={}s renew~{}s mgr_share={:.2} \
             conflict={:.3} store_err={:.3} slow={:.3} faults~{}s graceful={} kill={} pause={} \
             clogs={} skew<={}s long_part={} dup_join={:.2} conc_renew={:.2} cancel_poll={:.2} \
             garbage_csr={:.2} bad_token={:.2} admin~{}s extca={} extca_only={} extca_faults={}",
            self.managers,
            self.clients,
            self.safety.as_secs(),
            self.liveness_budget.as_secs(),
            self.retry_interval.as_secs(),
            self.renew_interval.as_secs(),
            self.manager_share,
            self.p_conflict,
            self.p_store_error,
            self.p_slow_commit,
            self.fault_interval.as_secs(),
            self.leader_graceful,
            self.leader_kill,
            self.leader_pause,
            self.clogs,
            self.max_clock_skew.as_secs(),
            self.long_partitions,
            self.p_duplicate_join,
            self.p_concurrent_renew,
            self.p_cancel_poll,
            self.p_garbage_csr,
            self.p_bad_token,
            self.admin_interval.as_secs(),
            self.external_ca,
            self.external_ca && self.external_only,
            self.external_ca && self.extca_faults,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_a_function_of_the_seed() {
        assert_eq!(SimOptions::from_seed(7), SimOptions::from_seed(7));
        let distinct = (0..50).map(SimOptions::from_seed).filter(|o| o.managers == 3).count();
        assert!(distinct > 5 && distinct < 45, "seeds vary the manager count: {distinct}/50");
        for s in 0..200 {
            let o = SimOptions::from_seed(s);
            assert!((3..=5).contains(&o.managers) && (20..=28).contains(&o.clients));
            assert!(o.p_conflict <= 0.3 && o.p_store_error <= 0.05);
        }
    }
}
