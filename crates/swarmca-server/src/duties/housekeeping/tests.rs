//! Blacklist pruning, on an injected clock.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use swarmca_store::{MemStore, Op, Store};
use swarmca_types::{BlacklistedCertificate, Cluster};

use super::{prune_blacklist, run};
use crate::env::Clock;
use crate::signal::Signal;

struct At(SystemTime);

impl Clock for At {
    fn now(&self) -> SystemTime {
        self.0
    }
}

fn entry(expiry: Option<SystemTime>) -> BlacklistedCertificate {
    BlacklistedCertificate { expiry: expiry.map(swarmca_types::prost_types::Timestamp::from) }
}

async fn store_with_blacklist(now: SystemTime) -> Arc<MemStore> {
    let store = Arc::new(MemStore::new());
    let mut c = Cluster { id: "c".into(), ..Default::default() };
    let day = Duration::from_secs(86_400);
    c.blacklisted_certificates.insert("expired".into(), entry(Some(now - day)));
    c.blacklisted_certificates.insert("current".into(), entry(Some(now + day)));
    c.blacklisted_certificates.insert("no-expiry".into(), entry(None));
    store.commit(vec![Op::CreateCluster(c)]).await.unwrap();
    store
}

fn ids(c: &Cluster) -> Vec<&str> {
    c.blacklisted_certificates.keys().map(String::as_str).collect()
}

#[tokio::test]
async fn entries_go_once_the_certificate_they_block_has_expired() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    let store = store_with_blacklist(now).await;
    assert_eq!(prune_blacklist(&*store, "c", now).await.unwrap(), 1);
    let c = store.get_cluster("c").await.unwrap().unwrap();
    assert_eq!(ids(&c), ["current", "no-expiry"]);
    // Nothing more to prune: no write.
    let v = swarmca_store::version_of(c.meta.as_ref());
    assert_eq!(prune_blacklist(&*store, "c", now).await.unwrap(), 0);
    assert_eq!(swarmca_store::version_of(store.get_cluster("c").await.unwrap().unwrap().meta.as_ref()), v);
    // Two days on, the other one too; an entry without an expiry is kept.
    let later = now + Duration::from_secs(2 * 86_400);
    assert_eq!(prune_blacklist(&*store, "c", later).await.unwrap(), 1);
    assert_eq!(ids(&store.get_cluster("c").await.unwrap().unwrap()), ["no-expiry"]);
}

#[tokio::test]
async fn a_leader_term_prunes_at_its_start_and_stops_with_the_term() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    let store = store_with_blacklist(now).await;
    let cancel = Signal::new(false);
    let task = tokio::spawn(run(Arc::new(At(now)), "c".into(), cancel.clone(), store.clone()));
    for _ in 0..200 {
        if ids(&store.get_cluster("c").await.unwrap().unwrap()).len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(ids(&store.get_cluster("c").await.unwrap().unwrap()), ["current", "no-expiry"]);
    cancel.set(true);
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops with its term").unwrap();
}
