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

/// A fault the nemesis can inject; victims and durations are drawn from the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    LeaderGraceful,
    LeaderKill,
    LeaderPause,
    Clog,
    ClockSkew,
    LongPartition,
    ExtCaCrash,
    ExtCaClog,
    ExtCaPause,
    ExtCaHang,
    ExtCaHttp500,
    ExtCaGarbage,
    ExtCaRefuse,
    StorePartition,
}

impl FaultKind {
    /// Every kind, in a fixed order.
    pub const ALL: [FaultKind; 14] = [
        FaultKind::LeaderGraceful,
        FaultKind::LeaderKill,
        FaultKind::LeaderPause,
        FaultKind::Clog,
        FaultKind::ClockSkew,
        FaultKind::LongPartition,
        FaultKind::ExtCaCrash,
        FaultKind::ExtCaClog,
        FaultKind::ExtCaPause,
        FaultKind::ExtCaHang,
        FaultKind::ExtCaHttp500,
        FaultKind::ExtCaGarbage,
        FaultKind::ExtCaRefuse,
        FaultKind::StorePartition,
    ];

    /// The short name used in scenario strings.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::LeaderGraceful => "leader_graceful",
            FaultKind::LeaderKill => "leader_kill",
            FaultKind::LeaderPause => "leader_pause",
            FaultKind::Clog => "clog",
            FaultKind::ClockSkew => "clock_skew",
            FaultKind::LongPartition => "long_partition",
            FaultKind::ExtCaCrash => "extca_crash",
            FaultKind::ExtCaClog => "extca_clog",
            FaultKind::ExtCaPause => "extca_pause",
            FaultKind::ExtCaHang => "extca_hang",
            FaultKind::ExtCaHttp500 => "extca_http500",
            FaultKind::ExtCaGarbage => "extca_garbage",
            FaultKind::ExtCaRefuse => "extca_refuse",
            FaultKind::StorePartition => "store_partition",
        }
    }

    pub fn from_name(s: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// The most clients a run may have (their addresses are drawn from 10.1.0.0/16).
pub const MAX_CLIENTS: usize = 1000;

/// The options of one simulated run.
#[derive(Debug, Clone, PartialEq)]
pub struct SimOptions {
    /// The seed everything derives from.
    pub seed: u64,
    /// Manager nodes sharing the store (3–5).
    pub managers: usize,
    /// Client nodes joining and renewing (20–21).
    pub clients: usize,
    /// Length of the safety phase (faults on).
    pub safety: Duration,
    /// Simulated time the liveness phase may take to converge after healing.
    pub liveness_budget: Duration,
    /// The CA's retry ticker.
    pub retry_interval: Duration,
    /// Mean time between a client's forced renewals (besides the lifetime-driven ones and those
    /// the dispatcher asks for: role changes, root rotations).
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
    /// Probability a join carries a wrong or stale token (and that an impostor with a forged
    /// certificate tries to renew as a node before its renewal).
    pub p_bad_token: f64,
    /// Mean time between admin actions (rotate, remove, promote/demote, expiry).
    pub admin_interval: Duration,
    /// Sign through the fake external CFSSL CA.
    pub external_ca: bool,
    /// ...with no CA key in the cluster (external-only signing).
    pub external_only: bool,
    /// F3: external-CA outages and bad answers.
    pub extca_faults: bool,
    /// The external CA fails some CSRs recoverably, forever (HTTP 503 for ~6% of CSRs): other
    /// nodes must still be signed.
    pub extca_poison: bool,
    /// An explicit fault schedule (time into the run, fault) replacing the random nemesis: a
    /// scenario as data, as proptest generates and shrinks it, and as `--shrink` prints it. A
    /// seed's own schedule (what its random nemesis injected, [`crate::run::Report::faults`])
    /// replays that seed exactly: the schedule makes the same random draws the nemesis made.
    pub schedule: Option<Vec<(Duration, FaultKind)>>,
    /// The admin actor rotates the root CA (start, restart towards another root, abort); a
    /// rotation in progress at heal must complete in the liveness phase.
    pub root_rotation: bool,
    /// Manager↔store partitions: one manager (the leader or a follower) cannot reach the store
    /// for a while; a leader cut off past its lease loses the leadership.
    pub store_partitions: bool,
    /// A scale seed (see [`SimOptions::with_scale`]).
    pub scale: bool,
    /// A time seed (see [`SimOptions::with_time`]).
    pub time: bool,
    /// The node certificate validity the cluster is created with (None: the default, 90 days).
    pub node_cert_expiry: Option<Duration>,
    /// How long the cluster's first root has left when the run starts (None: its full 20
    /// years). A root with weeks left is shorter than a 90-day leaf: what is signed under it
    /// must end with it (I2), until a rotation brings a new root.
    pub root_life: Option<Duration>,
}

impl SimOptions {
    /// The options of `seed`.
    pub fn from_seed(seed: u64) -> SimOptions {
        let mut r = SplitMix64(seed ^ 0x5357_4152_4d43_4121);
        SimOptions {
            seed,
            managers: r.range(3, 5) as usize,
            clients: r.range(20, 21) as usize,
            safety: Duration::from_secs(600),
            liveness_budget: Duration::from_secs(300),
            retry_interval: Duration::from_secs(r.range(1, 10)),
            renew_interval: Duration::from_secs(r.range(1800, 7200)),
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
            extca_poison: r.chance(0.2),
            schedule: None,
            // Drawn last: the options above stay what they were for every seed.
            root_rotation: r.chance(0.25),
            store_partitions: r.chance(0.5),
            scale: false,
            time: false,
            node_cert_expiry: None,
            root_life: None,
        }
        .with_scale(&mut r)
        .with_time(&mut r)
        .with_root_life(&mut r)
    }

    /// Three seeds in ten start from a root with 7–60 days left, less than a default leaf's 90:
    /// drawn after every other option, which stay what they were.
    fn with_root_life(mut self, r: &mut SplitMix64) -> SimOptions {
        if r.chance(0.3) {
            self.root_life = Some(Duration::from_secs(r.range(7, 60) * 86_400));
        }
        self
    }

    /// One seed in twenty that is not a scale seed is a time seed: a safety phase of 6–24
    /// simulated hours, certificates valid for 1–4 hours (the admin changes it among 1, 2, 4
    /// and 8 hours), and faults and admin actions ten times rarer, so that certificates expire,
    /// renew at the end of their lives and removed nodes' blacklist entries are pruned.
    fn with_time(mut self, r: &mut SplitMix64) -> SimOptions {
        if !self.scale && r.chance(0.05) {
            self.time = true;
            self.safety = Duration::from_secs(r.range(6, 24) * 3600);
            self.node_cert_expiry = Some(Duration::from_secs(r.range(1, 4) * 3600));
            self.fault_interval *= 10;
            self.admin_interval *= 10;
        }
        self
    }

    /// One seed in ten is a scale seed: 40–300 clients, so that every per-batch limit of the
    /// server (a rotation's 30 nodes per tick, the signing jobs in parallel) is exceeded
    /// several times over. Drawn after every other option, which stay what they were.
    fn with_scale(mut self, r: &mut SplitMix64) -> SimOptions {
        if r.chance(0.1) {
            self.scale = true;
            self.clients = r.range(40, 300) as usize;
        }
        self
    }

    /// The replayable one-line form of a scenario (see [`SimOptions::from_scenario`]).
    pub fn to_scenario(&self) -> String {
        let faults: Vec<String> =
            self.schedule.iter().flatten().map(|(t, k)| format!("{}:{}", seconds(*t), k.name())).collect();
        format!(
            "seed={},managers={},clients={},safety={},conflict={},store_err={},slow={},extca={},extca_only={},rotation={},faults={}",
            self.seed,
            self.managers,
            self.clients,
            self.safety.as_secs(),
            self.p_conflict,
            self.p_store_error,
            self.p_slow_commit,
            self.external_ca,
            self.external_only,
            self.root_rotation,
            faults.join(";"),
        )
    }

    /// Parses [`SimOptions::to_scenario`]'s form; unnamed options come from the seed.
    pub fn from_scenario(s: &str) -> Result<SimOptions, String> {
        let mut kv = std::collections::BTreeMap::new();
        for part in s.split(',') {
            let (k, v) = part.split_once('=').ok_or_else(|| format!("expected key=value: {part:?}"))?;
            kv.insert(k.trim(), v.trim());
        }
        let num = |k: &str| -> Result<Option<u64>, String> {
            kv.get(k).map(|v| v.parse::<u64>().map_err(|e| format!("{k}: {e}"))).transpose()
        };
        let float = |k: &str| -> Result<Option<f64>, String> {
            kv.get(k).map(|v| v.parse::<f64>().map_err(|e| format!("{k}: {e}"))).transpose()
        };
        let flag = |k: &str| -> Result<Option<bool>, String> {
            kv.get(k).map(|v| v.parse::<bool>().map_err(|e| format!("{k}: {e}"))).transpose()
        };
        let seed = num("seed")?.ok_or("missing seed=")?;
        let mut o = SimOptions::from_seed(seed);
        if let Some(v) = num("managers")? {
            o.managers = v.clamp(1, 9) as usize;
        }
        if let Some(v) = num("clients")? {
            o.clients = v.clamp(1, MAX_CLIENTS as u64) as usize;
        }
        if let Some(v) = num("safety")? {
            o.safety = Duration::from_secs(v);
        }
        o.p_conflict = float("conflict")?.unwrap_or(o.p_conflict).clamp(0.0, 1.0);
        o.p_store_error = float("store_err")?.unwrap_or(o.p_store_error).clamp(0.0, 1.0);
        o.p_slow_commit = float("slow")?.unwrap_or(o.p_slow_commit).clamp(0.0, 1.0);
        o.external_ca = flag("extca")?.unwrap_or(o.external_ca);
        o.external_only = flag("extca_only")?.unwrap_or(o.external_only);
        o.root_rotation = flag("rotation")?.unwrap_or(o.root_rotation);
        let mut faults = Vec::new();
        for f in kv.get("faults").copied().unwrap_or("").split(';').filter(|f| !f.is_empty()) {
            let (t, k) = f.split_once(':').ok_or_else(|| format!("fault {f:?}: expected SECONDS:KIND"))?;
            let t = parse_seconds(t).ok_or_else(|| format!("fault time {t:?}: expected seconds"))?;
            let k = FaultKind::from_name(k).ok_or_else(|| format!("unknown fault {k:?}"))?;
            faults.push((t, k));
        }
        o.schedule = Some(faults);
        Ok(o)
    }
}

/// `d` in seconds, exact to the nanosecond, without trailing zeros (`12`, `12.5`,
/// `12.000000301`).
pub fn seconds(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        return d.as_secs().to_string();
    }
    let frac = format!("{:09}", d.subsec_nanos());
    format!("{}.{}", d.as_secs(), frac.trim_end_matches('0'))
}

/// The inverse of [`seconds`]: whole seconds and up to nine decimals.
pub fn parse_seconds(s: &str) -> Option<Duration> {
    let (whole, frac) = match s.split_once('.') {
        Some((_, "")) => return None,
        Some(parts) => parts,
        None => (s, ""),
    };
    if whole.is_empty() || frac.len() > 9 || !whole.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos = if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse::<u32>().ok()? };
    Some(Duration::new(whole.parse().ok()?, nanos))
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
            extca_poison: true,
            schedule: None,
            root_rotation: true,
            store_partitions: true,
            scale: false,
            time: false,
            node_cert_expiry: None,
            root_life: Some(Duration::from_secs(30 * 86_400)),
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
             garbage_csr={:.2} bad_token={:.2} admin~{}s extca={} extca_only={} extca_faults={} \
             rotation={} store_part={} root_life={}",
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
            self.root_rotation,
            self.store_partitions,
            self.root_life.map_or("20y".to_string(), |d| format!("{}d", d.as_secs() / 86_400)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_round_trip() {
        let mut o = SimOptions::from_seed(9);
        o.managers = 4;
        o.schedule = Some(vec![
            (Duration::from_secs(5), FaultKind::LeaderKill),
            (Duration::new(30, 123_456_789), FaultKind::ExtCaRefuse),
            (Duration::new(31, 500_000_000), FaultKind::Clog),
        ]);
        let back = SimOptions::from_scenario(&o.to_scenario()).unwrap();
        assert_eq!(back.to_scenario(), o.to_scenario());
        assert_eq!(back.schedule, o.schedule);
        assert!(o.to_scenario().contains("faults=5:leader_kill;30.123456789:extca_refuse;31.5:clog"));
        assert!(SimOptions::from_scenario("seed=1,faults=3:nope").is_err());
        for bad in ["", ".5", "1.", "1.1234567891", "-1", "1e3", "1.x"] {
            assert_eq!(parse_seconds(bad), None, "{bad:?}");
        }
        assert_eq!(parse_seconds("7.05"), Some(Duration::from_millis(7050)));
    }

    #[test]
    fn options_are_a_function_of_the_seed() {
        assert_eq!(SimOptions::from_seed(7), SimOptions::from_seed(7));
        let distinct = (0..50).map(SimOptions::from_seed).filter(|o| o.managers == 3).count();
        assert!(distinct > 5 && distinct < 45, "seeds vary the manager count: {distinct}/50");
        for s in 0..200 {
            let o = SimOptions::from_seed(s);
            let clients = if o.scale { 40..=300 } else { 20..=28 };
            assert!((3..=5).contains(&o.managers) && clients.contains(&o.clients), "{o:?}");
            assert!(!(o.scale && o.time));
            assert_eq!(o.time, o.node_cert_expiry.is_some());
            assert!(o.p_conflict <= 0.3 && o.p_store_error <= 0.05);
        }
    }
}
