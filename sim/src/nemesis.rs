//! Typed faults drawn from the seed during the safety phase, and the heal that ends it:
//! F2 leader changes (graceful step-down, kill, pause), F4 clogged client↔manager links,
//! F8 clock skew and jumps on managers, F9 long partitions of a client, and manager↔store
//! partitions (a cut-off leader loses its lease). F1 (store faults) lives
//! in the store wrapper; F5 (client misbehaviour) in the workload.
//!
//! The nemesis never picks a leader: a killed, paused or cut-off leader stops renewing its
//! lease, the simulated election ([`crate::election`]) expires it and elects the oldest live
//! candidate, and the deposed manager's own `Manager` notices and steps down.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use madsim::net::NetSim;
use madsim::rand::{thread_rng, Rng};
use madsim::task::NodeId;

use crate::election::LEASE;
use crate::shared::{lock, Shared};
use crate::store::Link;
use crate::workload::exp_delay;
use crate::world::{Health, World};

/// The fake external CA, when the run has one.
#[derive(Clone)]
pub struct ExtCa {
    pub node: NodeId,
    pub control: Arc<crate::extca::Control>,
}

use crate::options::FaultKind as Fault;

fn enabled(shared: &Shared, ext: bool) -> Vec<Fault> {
    let o = &shared.opts;
    let mut v = Vec::new();
    if ext && o.extca_faults {
        v.extend([
            Fault::ExtCaCrash,
            Fault::ExtCaClog,
            Fault::ExtCaPause,
            Fault::ExtCaHang,
            Fault::ExtCaHttp500,
            Fault::ExtCaGarbage,
            Fault::ExtCaRefuse,
        ]);
    }
    if o.leader_graceful {
        v.push(Fault::LeaderGraceful);
    }
    if o.leader_kill {
        v.push(Fault::LeaderKill);
    }
    if o.leader_pause {
        v.push(Fault::LeaderPause);
    }
    if o.clogs {
        v.push(Fault::Clog);
    }
    if !o.max_clock_skew.is_zero() {
        v.push(Fault::ClockSkew);
    }
    if o.long_partitions {
        v.push(Fault::LongPartition);
    }
    if o.store_partitions {
        v.push(Fault::StorePartition);
    }
    v
}

/// Runs faults until healing starts: at random (a delay drawn with mean `fault_interval`, then
/// a kind among those the seed enables), or from an explicit schedule. Either way every fault
/// injected is noted with the time it was due ([`Shared::faults`]), so that a seed's schedule
/// can be replayed, cut down and replayed again (`swarmca-sim --shrink`).
///
/// A schedule makes the random draws the random nemesis makes (a delay before each fault, a
/// kind at each, one more delay after the last) and ignores their values: given the schedule
/// the random nemesis produced, the run is that seed's run, event for event. With faults left
/// out, the rest of the run draws differently, as any other scenario.
pub async fn run(world: Arc<World>, clients: Vec<NodeId>, ext: Option<ExtCa>) {
    let shared = world.shared.clone();
    let faults = enabled(&shared, ext.is_some());
    let kind_draw = |n: usize| if n > 0 { thread_rng().gen_range(0..n) } else { 0 };
    if let Some(schedule) = shared.opts.schedule.clone() {
        // With no kind enabled the random nemesis draws nothing at all.
        if faults.is_empty() && schedule.is_empty() {
            return;
        }
        for (at, f) in schedule {
            let _ = exp_delay(shared.opts.fault_interval);
            let now = madsim::time::TimeHandle::current().elapsed();
            if at > now {
                madsim::time::sleep(at - now).await;
            }
            if shared.healing() {
                return;
            }
            let _ = kind_draw(faults.len());
            lock(&shared.faults).push((at, f));
            apply(&world, &clients, ext.as_ref(), f).await;
        }
        madsim::time::sleep(exp_delay(shared.opts.fault_interval)).await;
        return;
    }
    if faults.is_empty() {
        return;
    }
    while !shared.healing() {
        let at = madsim::time::TimeHandle::current().elapsed() + exp_delay(shared.opts.fault_interval);
        madsim::time::sleep(at - madsim::time::TimeHandle::current().elapsed()).await;
        if shared.healing() {
            break;
        }
        let f = faults[kind_draw(faults.len())];
        lock(&shared.faults).push((at, f));
        apply(&world, &clients, ext.as_ref(), f).await;
    }
}

async fn apply(world: &Arc<World>, clients: &[NodeId], ext: Option<&ExtCa>, f: Fault) {
    let shared = &world.shared;
    let net = NetSim::current();
    let d = Duration::from_secs(thread_rng().gen_range(2..40));
    match (f, ext) {
        (Fault::ExtCaCrash, Some(e)) => {
            shared.coverage.hit("fault.extca_kill");
            shared.log.push(format!("nemesis: crash external CA for {}s", d.as_secs()));
            e.control.crash();
            let c = e.control.clone();
            madsim::task::spawn(async move {
                madsim::time::sleep(d).await;
                c.start();
            });
            return;
        }
        (Fault::ExtCaClog, Some(e)) => {
            shared.coverage.hit("fault.extca_clog");
            shared.log.push(format!("nemesis: clog external CA for {}s", d.as_secs()));
            net.clog_node(e.node);
            let id = e.node;
            madsim::task::spawn(async move {
                madsim::time::sleep(d).await;
                NetSim::current().unclog_node(id);
            });
            return;
        }
        (Fault::ExtCaPause, Some(e)) => {
            shared.coverage.hit("fault.extca_pause");
            shared.log.push(format!("nemesis: pause external CA for {}s", d.as_secs()));
            madsim::runtime::Handle::current().pause(e.node);
            let id = e.node;
            madsim::task::spawn(async move {
                madsim::time::sleep(d).await;
                madsim::runtime::Handle::current().resume(id);
            });
            return;
        }
        (Fault::ExtCaHang | Fault::ExtCaHttp500 | Fault::ExtCaGarbage | Fault::ExtCaRefuse, Some(e)) => {
            use crate::extca::Mode;
            let (mode, name) = match f {
                Fault::ExtCaHang => (Mode::Hang, "fault.extca_hang"),
                Fault::ExtCaHttp500 => (Mode::Http500, "fault.extca_http500"),
                Fault::ExtCaGarbage => (Mode::Garbage, "fault.extca_garbage"),
                _ => (Mode::Refuse, "fault.extca_refuse"),
            };
            shared.coverage.hit(name);
            shared.log.push(format!("nemesis: external CA answers {mode:?} for {}s", d.as_secs()));
            *crate::shared::lock(&e.control.mode) = mode;
            let c = e.control.clone();
            madsim::task::spawn(async move {
                madsim::time::sleep(d).await;
                *crate::shared::lock(&c.mode) = crate::extca::Mode::Sign;
            });
            return;
        }
        _ => {}
    }
    match f {
        Fault::ExtCaCrash
        | Fault::ExtCaClog
        | Fault::ExtCaPause
        | Fault::ExtCaHang
        | Fault::ExtCaHttp500
        | Fault::ExtCaGarbage
        | Fault::ExtCaRefuse => {}
        Fault::LeaderGraceful => {
            // The leader's own `Manager` resigns; the oldest other candidate wins.
            let Some(l) = world.leader() else { return };
            if world.health(l) != Health::Up || world.store_cut(l) || !world.is_leading(l) {
                return;
            }
            shared.coverage.hit("fault.leader_graceful");
            shared.log.push(format!("nemesis: manager-{l} asked to step down"));
            world.step_down(l);
        }
        Fault::LeaderKill => {
            let Some(old) = world.leader() else { return };
            if world.health(old) != Health::Up {
                return;
            }
            shared.coverage.hit("fault.leader_kill");
            shared.log.push(format!("nemesis: kill leader manager-{old}"));
            world.kill(old);
            let w = world.clone();
            let down = Duration::from_secs(thread_rng().gen_range(1..60));
            madsim::task::spawn(async move {
                madsim::time::sleep(down).await;
                if w.health(old) == Health::Dead {
                    // Now and then the machine is replaced: a new manager, with an empty data
                    // directory, takes the dead one's place.
                    if thread_rng().gen_bool(0.2) && w.replace(old) {
                        w.shared.coverage.hit("fault.manager_replaced");
                        w.shared.log.push(format!("nemesis: manager-{old} replaced by a new machine"));
                    }
                    w.shared.log.push(format!("nemesis: restart manager-{old}"));
                    w.restart(old).await;
                }
            });
        }
        Fault::LeaderPause => {
            let Some(l) = world.leader() else { return };
            if world.health(l) != Health::Up {
                return;
            }
            shared.coverage.hit("fault.leader_pause");
            let d = Duration::from_secs(thread_rng().gen_range(1..20));
            shared.log.push(format!("nemesis: pause leader manager-{l} for {}s", d.as_secs()));
            world.pause(l);
            let w = world.clone();
            madsim::task::spawn(async move {
                // Paused past its lease, it is deposed while it sleeps; once resumed it runs its
                // old term (its writes are fenced off) until it notices the loss.
                madsim::time::sleep(d).await;
                if w.health(l) == Health::Paused {
                    w.resume(l);
                    w.shared.log.push(format!("nemesis: resume manager-{l}"));
                    if w.leader() != Some(l) {
                        w.shared.coverage.hit("fault.deposed_leader_resumed");
                    }
                }
            });
        }
        Fault::Clog => {
            let (Some(&c), Some(m)) = (
                clients.get(thread_rng().gen_range(0..clients.len().max(1))),
                world.managers.get(thread_rng().gen_range(0..world.managers.len())),
            ) else {
                return;
            };
            shared.coverage.hit("fault.clog");
            let d = Duration::from_secs(thread_rng().gen_range(1..30));
            shared.log.push(format!("nemesis: clog client node {c} <-> {} for {}s", m.addr, d.as_secs()));
            let mid = m.node.id();
            net.clog_link(c, mid);
            net.clog_link(mid, c);
            madsim::task::spawn(async move {
                madsim::time::sleep(d).await;
                let net = NetSim::current();
                net.unclog_link(c, mid);
                net.unclog_link(mid, c);
            });
        }
        Fault::ClockSkew => {
            let i = thread_rng().gen_range(0..world.managers.len());
            let max = shared.opts.max_clock_skew.as_millis() as i64;
            let skew = thread_rng().gen_range(-max..=max);
            shared.coverage.hit("fault.clock_skew");
            shared.log.push(format!("nemesis: manager-{i} clock skew {skew} ms"));
            if let Some(m) = world.managers.get(i) {
                m.skew_ms.store(skew, Ordering::SeqCst);
            }
        }
        Fault::StorePartition => {
            let up = world.up();
            if up.is_empty() {
                return;
            }
            // The leader half the time (when there is one), else any manager that is up.
            let victim = match world.leader().filter(|l| up.contains(l)) {
                Some(l) if thread_rng().gen_bool(0.5) => l,
                _ => up[thread_rng().gen_range(0..up.len())],
            };
            if world.store_cut(victim) {
                return;
            }
            let d = Duration::from_secs(thread_rng().gen_range(1..30));
            let was_leader = world.leader() == Some(victim);
            let closes = thread_rng().gen_bool(0.3);
            shared.coverage.hit("fault.store_partition");
            shared.log.push(format!(
                "nemesis: manager-{victim} ({}) cut off from the store for {}s (watches {})",
                if was_leader { "leader" } else { "follower" },
                d.as_secs(),
                if closes { "close" } else { "stall" }
            ));
            world.set_store_link(victim, if closes { Link::CutClosed } else { Link::CutStalled });
            // Sometimes its process restarts during the outage (a host rebooting while its
            // network is down): the new process starts without ever having read the cluster.
            if d >= Duration::from_secs(4) && thread_rng().gen_bool(0.25) {
                let at = Duration::from_secs(thread_rng().gen_range(1..d.as_secs() - 2));
                let w = world.clone();
                madsim::task::spawn(async move {
                    madsim::time::sleep(at).await;
                    if w.store_cut(victim) && w.health(victim) == Health::Up {
                        w.shared.coverage.hit("fault.restart_while_cut_off");
                        w.shared.log.push(format!("nemesis: manager-{victim} restarts while cut off"));
                        w.kill(victim);
                        madsim::time::sleep(Duration::from_secs(1)).await;
                        w.restart(victim).await;
                    }
                });
            }
            let w = world.clone();
            madsim::task::spawn(async move {
                // A leader cut off from the store cannot renew its lease either: past it, the
                // election replaces it, and the cut-off manager notices and steps down (its
                // writes meanwhile are refused: unreachable, then fenced).
                madsim::time::sleep(d).await;
                if was_leader && d > LEASE && w.leader() != Some(victim) {
                    w.shared.coverage.hit("fault.store_partition_deposed_leader");
                }
                if w.store_cut(victim) {
                    w.set_store_link(victim, Link::Up);
                    w.shared.log.push(format!("nemesis: manager-{victim} reaches the store again"));
                }
            });
        }
        Fault::LongPartition => {
            let Some(&c) = clients.get(thread_rng().gen_range(0..clients.len().max(1))) else { return };
            let d = Duration::from_secs(thread_rng().gen_range(60..400));
            shared.log.push(format!("nemesis: partition client node {c} for {}s", d.as_secs()));
            net.clog_node(c);
            madsim::task::spawn(async move {
                madsim::time::sleep(d).await;
                NetSim::current().unclog_node(c);
            });
        }
    }
}

/// Ends every fault: unclog, resume, restart, unskew, and make sure a leader runs.
pub async fn heal(world: &Arc<World>, clients: &[NodeId], ext: Option<&ExtCa>) {
    let net = NetSim::current();
    if let Some(e) = ext {
        *crate::shared::lock(&e.control.mode) = crate::extca::Mode::Sign;
        net.unclog_node(e.node);
        madsim::runtime::Handle::current().resume(e.node);
        e.control.start();
    }
    for &c in clients {
        net.unclog_node(c);
        for m in &world.managers {
            net.unclog_link(c, m.node.id());
            net.unclog_link(m.node.id(), c);
        }
    }
    for (i, m) in world.managers.iter().enumerate() {
        m.skew_ms.store(0, Ordering::SeqCst);
        m.store.set_link(Link::Up);
        net.unclog_node(m.node.id());
        match world.health(i) {
            // A deposed leader resumed here notices its lost lease by itself.
            Health::Paused => world.resume(i),
            Health::Dead => world.restart(i).await,
            Health::Up => {}
        }
    }
    // The election names a leader by itself once a candidate can renew its lease.
    let leader = world.await_leader(LEASE * 3).await;
    world.shared.log.push(format!("heal: leader manager-{leader:?}"));
}
