//! Runs simulation seeds: `swarmca-sim [--seeds N] [--first-seed S] [--seed S] [--determinism]
//! [--long MINUTES] [--verbose]`. Use it through `scripts/sim`, which builds it with
//! `--cfg madsim`.

#![allow(clippy::panic, clippy::indexing_slicing)]

/// The simulator allocates and frees many small buffers per simulated call (messages,
/// futures, parsed certificates); mimalloc, as in the `swarmca` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(not(madsim))]
fn main() {
    eprintln!("swarmca-sim must be built with RUSTFLAGS=\"--cfg madsim\"; use scripts/sim");
    std::process::exit(2);
}

#[cfg(madsim)]
fn main() {
    std::process::exit(sim_main::main());
}

#[cfg(madsim)]
mod sim_main {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use swarmca_sim::coverage::REQUIRED;
    use swarmca_sim::options::SimOptions;
    use swarmca_sim::run::{run_seed, run_with, warm_up, Report};

    struct Args {
        seeds: u64,
        first: u64,
        single: Option<u64>,
        determinism: bool,
        long_minutes: Option<u64>,
        verbose: bool,
        coverage: bool,
        madsim_check: bool,
        jobs: usize,
        scenario: Option<String>,
        shrink: Option<u64>,
    }

    fn usage() -> ! {
        eprintln!(
            "usage: swarmca-sim [--seeds N] [--first-seed S] [--seed S] [--determinism] [--long MINUTES] [--jobs J] [--verbose] [--no-coverage] [--madsim-check] [--scenario STR] [--shrink SEED]"
        );
        std::process::exit(2);
    }

    fn parse() -> Args {
        let mut a = Args {
            seeds: 1,
            first: 1,
            single: None,
            determinism: false,
            long_minutes: None,
            verbose: false,
            coverage: true,
            madsim_check: false,
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            scenario: None,
            shrink: None,
        };
        let mut it = std::env::args().skip(1);
        let num = |v: Option<String>| v.and_then(|s| s.parse().ok()).unwrap_or_else(|| usage());
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--seeds" => a.seeds = num(it.next()),
                "--first-seed" => a.first = num(it.next()),
                "--seed" => a.single = Some(num(it.next())),
                "--determinism" => a.determinism = true,
                "--long" => a.long_minutes = Some(num(it.next())),
                "--verbose" | "-v" => a.verbose = true,
                "--no-coverage" => a.coverage = false,
                "--madsim-check" => a.madsim_check = true,
                "--jobs" | "-j" => a.jobs = num(it.next()) as usize,
                "--scenario" => a.scenario = Some(it.next().unwrap_or_else(|| usage())),
                "--shrink" => a.shrink = Some(num(it.next())),
                "--help" | "-h" => usage(),
                _ => usage(),
            }
        }
        a
    }

    /// Runs one seed in a fresh runtime on a fresh thread (thread-locals such as std's
    /// `RandomState` keys and `rand`'s thread RNG would otherwise carry state from one seed
    /// into the next); a panic is reported as a crash of that seed.
    fn run_one(seed: u64, echo: bool) -> Result<Report, String> {
        let opts = SimOptions::from_seed(seed);
        let limit = opts.safety + opts.liveness_budget + Duration::from_secs(900);
        in_fresh_runtime(seed, limit, move || run_seed(echo))
    }

    /// Runs a scenario like [`run_one`] runs a seed.
    fn run_scenario(opts: SimOptions, echo: bool) -> Result<Report, String> {
        let limit = opts.safety + opts.liveness_budget + Duration::from_secs(900);
        in_fresh_runtime(opts.seed, limit, move || run_with(opts, echo))
    }

    fn in_fresh_runtime<F, Fut>(seed: u64, limit: Duration, go: F) -> Result<Report, String>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Report>,
    {
        let r = std::thread::spawn(move || {
            let mut rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
            rt.set_time_limit(limit);
            rt.block_on(go())
        })
        .join();
        r.map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into())
        })
    }

    /// `--shrink SEED`: runs the seed, then cuts its fault schedule and workload down to a
    /// scenario that still breaks the same invariant, and prints it for `--scenario`.
    fn shrink(seed: u64) -> i32 {
        use swarmca_sim::shrink::{shrink, signature};
        let started = Instant::now();
        let opts = SimOptions::from_seed(seed);
        println!("seed {seed}: {opts}");
        let first = match run_one(seed, false) {
            Ok(r) => r,
            Err(e) => {
                // The run's record (its fault schedule) is lost with the panic.
                println!("seed {seed} crashed ({e}); --shrink needs a violation, not a crash");
                return 2;
            }
        };
        let wanted = signature(&first.violations, false);
        if wanted.is_empty() {
            println!("seed {seed} passes: nothing to shrink");
            return 2;
        }
        println!("seed {seed} fails {wanted:?} with {} faults injected", first.faults.len());
        for v in &first.violations {
            println!("  {v}");
        }
        // The seed's own schedule replays the seed.
        let full = SimOptions { schedule: Some(first.faults.clone()), ..opts.clone() };
        match run_scenario(full.clone(), false) {
            Ok(r) if r.log_hash == first.log_hash => {
                println!("its fault schedule replays it exactly (hash {})", &r.log_hash[..16])
            }
            Ok(r) if !signature(&r.violations, false).iter().any(|v| wanted.contains(v)) => {
                println!(
                    "its fault schedule does not reproduce the failure (hash {}); cannot shrink",
                    &r.log_hash[..16]
                );
                return 2;
            }
            Ok(r) => println!(
                "its fault schedule fails the same way (hash {} differs from the seed's)",
                &r.log_hash[..16]
            ),
            Err(e) => {
                println!("its fault schedule crashes the run ({e}); cannot shrink");
                return 2;
            }
        }
        let mut fails = |o: &SimOptions| match run_scenario(o.clone(), false) {
            Ok(r) => signature(&r.violations, false).iter().any(|v| wanted.contains(v)),
            Err(_) => false,
        };
        let shrunk = shrink(&full, &first.faults, &mut fails, &mut |n| println!("  {n}"));
        // What is replayed below is what is printed: the scenario string, read back.
        let o = match SimOptions::from_scenario(&shrunk.options.to_scenario()) {
            Ok(o) => o,
            Err(e) => {
                println!("the shrunk scenario does not read back: {e}");
                return 1;
            }
        };
        let kept = o.schedule.as_ref().map_or(0, Vec::len);
        // The scenario printed must fail on every replay, with the same event log.
        let (a, b) = (run_scenario(o.clone(), false), run_scenario(o.clone(), false));
        let (Ok(a), Ok(b)) = (a, b) else {
            println!("the shrunk scenario crashed on replay");
            return 1;
        };
        println!(
            "shrunk in {} runs ({:.0} s): {kept} of {} faults, {} of {} clients, {} of {} managers, safety {} of {} s",
            shrunk.runs,
            started.elapsed().as_secs_f64(),
            shrunk.original_faults,
            o.clients,
            opts.clients,
            o.managers,
            opts.managers,
            o.safety.as_secs(),
            opts.safety.as_secs(),
        );
        for v in &a.violations {
            println!("  {v}");
        }
        let same = a.log_hash == b.log_hash && a.violations == b.violations;
        println!(
            "replayed twice: {} ({} events, hash {}{})",
            if same { "identical" } else { "DIFFERENT" },
            a.log_lines,
            &a.log_hash[..16],
            if same { String::new() } else { format!(" then {}", &b.log_hash[..16]) }
        );
        println!("  scripts/sim --scenario '{}' --verbose", o.to_scenario());
        if same && !a.violations.is_empty() {
            0
        } else {
            1
        }
    }

    fn regression_seeds() -> Vec<u64> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/regressions.txt");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split('#').next().and_then(|s| s.trim().parse().ok()))
            .collect()
    }

    pub fn main() -> i32 {
        let args = parse();
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_writer(std::io::stderr)
                .try_init();
        }
        // Initialise process-global lazy state once, before any run that counts.
        let _ = std::thread::spawn(|| {
            madsim::runtime::Runtime::with_seed_and_config(0, madsim::Config::default()).block_on(warm_up())
        })
        .join();
        if let Some(seed) = args.shrink {
            return shrink(seed);
        }
        if let Some(sc) = &args.scenario {
            // Replay a scenario as data (what --shrink and the proptest suite print).
            let opts = match SimOptions::from_scenario(sc) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("bad --scenario: {e}");
                    return 2;
                }
            };
            return match run_scenario(opts, args.verbose) {
                Ok(r) if r.violations.is_empty() => {
                    println!("scenario ok: {} events, hash {}", r.log_lines, &r.log_hash[..16]);
                    0
                }
                Ok(r) => {
                    for v in &r.violations {
                        println!("{v}");
                    }
                    println!("scenario FAILED: {} events, hash {}", r.log_lines, &r.log_hash[..16]);
                    1
                }
                Err(e) => {
                    println!("scenario CRASHED: {e}");
                    1
                }
            };
        }
        if args.madsim_check {
            // madsim's own check: runs the seed twice and panics at the first divergence of the
            // RNG/time call sequence, naming the simulated time.
            fn go() -> impl std::future::Future<Output = Report> {
                run_seed(false)
            }
            for seed in args.first..args.first + args.seeds {
                let rep = madsim::runtime::Runtime::check_determinism(seed, madsim::Config::default(), go);
                println!(
                    "seed {seed:>6} madsim determinism check passed ({} events, hash {})",
                    rep.log_lines,
                    &rep.log_hash[..16]
                );
            }
            return 0;
        }
        let fixed: Vec<u64> = match args.single {
            Some(s) => vec![s],
            None => {
                let mut v = regression_seeds();
                v.extend(args.first..args.first + args.seeds);
                v
            }
        };
        let started = Instant::now();
        let long_until = args.long_minutes.map(|m| started + Duration::from_secs(m * 60));
        // Workers pull seeds from a shared cursor: the fixed list, then (with --long) fresh
        // seeds until the time is up. Every seed runs on its own fresh thread.
        let cursor = std::sync::Arc::new(std::sync::Mutex::new((0usize, args.first + args.seeds)));
        let (tx, rx) = std::sync::mpsc::channel();
        let jobs = if args.single.is_some() { 1 } else { args.jobs.max(1) };
        let mut workers = Vec::new();
        for _ in 0..jobs {
            let (cursor, tx, fixed) = (cursor.clone(), tx.clone(), fixed.clone());
            let (determinism, echo) = (args.determinism, args.verbose && args.single.is_some());
            workers.push(std::thread::spawn(move || loop {
                let seed = {
                    let mut c = cursor.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(&s) = fixed.get(c.0) {
                        c.0 += 1;
                        s
                    } else if long_until.is_some_and(|t| Instant::now() < t) {
                        c.1 += 1;
                        c.1 - 1
                    } else {
                        return;
                    }
                };
                let t0 = Instant::now();
                let first = run_one(seed, echo);
                let second = if determinism { Some(run_one(seed, false)) } else { None };
                if tx.send((seed, first, second, t0.elapsed())).is_err() {
                    return;
                }
            }));
        }
        drop(tx);
        let mut total: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut failures = 0u64;
        let mut ran = 0u64;
        let mut sim_secs = 0f64;
        // Per kind of seed: seeds, wall time, simulated time, failures.
        let mut kinds: BTreeMap<&'static str, (u64, Duration, f64, u64)> = BTreeMap::new();
        for (seed, first, second, took) in rx {
            let opts = SimOptions::from_seed(seed);
            let kind = if opts.scale {
                "scale"
            } else if opts.time {
                "time"
            } else {
                "default"
            };
            let k = kinds.entry(kind).or_default();
            k.0 += 1;
            k.1 += took;
            k.3 += u64::from(!matches!(&first, Ok(r) if r.violations.is_empty()));
            match first {
                Ok(rep) => {
                    ran += 1;
                    sim_secs += rep.sim_time.as_secs_f64();
                    k.2 += rep.sim_time.as_secs_f64();
                    for (k, v) in &rep.coverage {
                        *total.entry(k).or_default() += v;
                    }
                    let mut bad = !rep.violations.is_empty();
                    let det = match second {
                        None => String::new(),
                        Some(Ok(again)) if again.log_hash == rep.log_hash => " det=ok".into(),
                        Some(Ok(again)) => {
                            bad = true;
                            format!(" det=MISMATCH({})", &again.log_hash[..16])
                        }
                        Some(Err(e)) => {
                            bad = true;
                            format!(" det=CRASH({e})")
                        }
                    };
                    println!(
                        "seed {seed:>6} {} {:<5} clients={:<3} events={:<6} issued={:<4} failed={:<3} joins={:<4} renewals={:<4} sim={:>5.0}s wall={:>5}ms hash={}{det}",
                        if bad { "FAIL" } else { "ok  " },
                        if opts.scale { "scale" } else if opts.time { "time" } else { "" },
                        opts.clients,
                        rep.log_lines,
                        rep.issued,
                        rep.failed,
                        rep.joins,
                        rep.renewals,
                        rep.sim_time.as_secs_f64(),
                        took.as_millis(),
                        &rep.log_hash[..16],
                    );
                    if args.single.is_some() {
                        // The seed as data: its fault schedule, to edit or cut by hand.
                        let o = SimOptions { schedule: Some(rep.faults.clone()), ..opts.clone() };
                        println!(
                            "  as a scenario ({} faults): --scenario '{}'",
                            rep.faults.len(),
                            o.to_scenario()
                        );
                    }
                    if bad {
                        failures += 1;
                        println!("  options: {opts}");
                        for v in &rep.violations {
                            println!("  {v}");
                        }
                        println!("  last events:");
                        for l in &rep.log_tail {
                            println!("    {l}");
                        }
                        println!("  replay: scripts/sim --seed {seed} --verbose");
                    }
                }
                Err(e) => {
                    failures += 1;
                    println!("seed {seed:>6} CRASH {e}");
                    println!("  options: {opts}");
                    println!("  replay: scripts/sim --seed {seed} --verbose");
                }
            }
        }
        for w in workers {
            let _ = w.join();
        }
        let wall = started.elapsed().as_secs_f64();
        println!();
        println!("coverage over {ran} seed(s):");
        let mut unhit = Vec::new();
        for name in REQUIRED {
            let n = total.get(name).copied().unwrap_or(0);
            println!("  {name:<40} {n}");
            if n == 0 {
                unhit.push(*name);
            }
        }
        for (k, v) in &total {
            if !REQUIRED.contains(k) {
                println!("  {k:<40} {v}");
            }
        }
        if kinds.len() > 1 || args.long_minutes.is_some() {
            println!("per kind of seed (wall time is per seed, on one of the {jobs} jobs):");
            for (kind, (n, wall, sim, failed)) in &kinds {
                println!(
                    "  {kind:<8} {n:>6} seeds, {:>8.1} ms wall and {:>7.0} simulated s each, {failed} failed",
                    wall.as_secs_f64() * 1000.0 / (*n).max(1) as f64,
                    sim / (*n).max(1) as f64,
                );
            }
        }
        println!(
            "{ran} seed(s) in {wall:.1} s: {:.2} seeds/s, {:.0} simulated s per wall s; {failures} failure(s)",
            ran as f64 / wall.max(1e-9),
            sim_secs / wall.max(1e-9)
        );
        if args.coverage && args.single.is_none() && !unhit.is_empty() {
            println!("coverage FAILED: never hit: {unhit:?}");
            return 1;
        }
        i32::from(failures > 0)
    }
}
