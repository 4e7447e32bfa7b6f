//! Deterministic simulation of the swarmca CA under madsim.
//!
//! Everything here needs `--cfg madsim` (see `scripts/sim`); a normal build compiles an empty
//! crate so that `cargo test --workspace` stays green.
//!
//! Layout: [`options`] derives every knob from one seed; [`world`] builds the managers (the
//! unchanged `swarmca-server`, each a production `Manager` over a shared store), [`election`] the
//! leases that decide who leads, [`workload`] the clients, [`admin`] the
//! operator racing issuance, [`nemesis`] the faults; [`store`] wraps the store with injected
//! conflicts and errors; [`mirror`] follows every store write into the [`log`] and the
//! [`checkers`]; [`run`] is one seed: safety phase, heal, liveness phase, verdict; [`shrink`]
//! cuts a failing seed down to a small scenario that still fails.

#![cfg_attr(not(madsim), allow(unused))]
// A test harness: a broken setup or an out-of-range pick is a harness bug and may panic.
#![allow(clippy::panic, clippy::indexing_slicing)]

#[cfg(madsim)]
pub mod admin;
#[cfg(madsim)]
pub mod checkers;
#[cfg(madsim)]
pub mod coverage;
#[cfg(madsim)]
pub mod election;
#[cfg(madsim)]
pub mod extca;
pub mod facts;
#[cfg(madsim)]
pub mod log;
#[cfg(madsim)]
pub mod mirror;
#[cfg(madsim)]
pub mod nemesis;
pub mod options;
#[cfg(madsim)]
pub mod peers;
#[cfg(madsim)]
pub mod prober;
#[cfg(madsim)]
pub mod run;
#[cfg(madsim)]
pub mod shared;
pub mod shrink;
#[cfg(madsim)]
pub mod store;
#[cfg(madsim)]
pub mod workload;
#[cfg(madsim)]
pub mod world;

/// Locks, recovering from poisoning (a panic already fails the run).
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
