//! A commit: one etcd transaction comparing what every op assumes, and, when a compare
//! fails, the reads that tell which error MemStore would give (see the module documentation).

use std::collections::{BTreeMap, BTreeSet};

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};

use crate::state::{Changes, Tables};
use crate::{version_of, Op, StoreError};

use super::*;

/// What the first op on a key assumes is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    Absent,
    Version(u64),
}

/// The keys a commit touches, with what was read for them at one revision.
pub(super) struct Reads {
    revision: u64,
    tables: Tables,
    /// Whether the fence key is still the same leadership (`None`: the store is not fenced).
    fence_holds: Option<bool>,
}

impl EtcdStore {
    pub(super) async fn commit_ops(&self, ops: Vec<Op>) -> Result<u64, StoreError> {
        if ops.is_empty() {
            return self.revision().await;
        }
        let (expect, base) = assumptions(&ops);
        let staged = base.stage(&Changes::at(unused_version(&ops, 1).saturating_sub(1)), ops.clone());
        let Ok((changes, _)) = staged else {
            // The ops contradict each other even if every assumption holds; which error MemStore
            // would give depends on what is stored, so read it.
            let reads = self.read_keys(&expect).await?;
            return Err(self.classify(ops, reads));
        };

        let mut compares = Vec::with_capacity(expect.len() + 1);
        let mut writes = Vec::with_capacity(expect.len());
        for (&(kind, ref id), &exp) in &expect {
            let key = self.key(kind, id);
            compares.push(match exp {
                Expect::Absent => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                // A version etcd cannot hold (0 included: no stored object has it) never matches.
                Expect::Version(v) => {
                    let v = i64::try_from(v).ok().filter(|v| *v > 0).unwrap_or(-1);
                    Compare::mod_revision(key.clone(), CompareOp::Equal, v)
                }
            });
            let value = match kind {
                Kind::Node => changes.nodes.get(id).map(|n| n.as_ref().map(Self::encode)),
                Kind::Cluster => changes.clusters.get(id).map(|c| c.as_ref().map(Self::encode)),
            };
            match value {
                Some(Some(bytes)) => writes.push(TxnOp::put(key, bytes, None)),
                // Created and deleted in this commit: nothing to write, the compare stays.
                Some(None) if exp == Expect::Absent => {}
                Some(None) => writes.push(TxnOp::delete(key, None)),
                None => {
                    return Err(StoreError::Unavailable(format!(
                        "etcd commit: internal error: key {} {id:?} has no staged value",
                        kind.dir()
                    )))
                }
            }
        }
        if let Some(f) = &self.fence {
            compares.push(Compare::create_revision(f.key.clone(), CompareOp::Equal, f.create_revision));
        }
        let txn = Txn::new().when(compares).and_then(writes).or_else(self.read_ops(&expect));
        let resp = self.txn(Retry::IfNotSent, txn).await.map_err(|e| self.unavailable("commit", e))?;
        let revision = header_revision(resp.header())?;
        if resp.succeeded() {
            return Ok(revision);
        }
        let reads = self.parse_reads(&expect, revision, &resp.op_responses())?;
        Err(self.classify(ops, reads))
    }

    /// Gets of every key in `expect` (in its order), then of the fence key if fenced.
    pub(super) fn read_ops(&self, expect: &BTreeMap<(Kind, String), Expect>) -> Vec<TxnOp> {
        let mut ops: Vec<TxnOp> =
            expect.keys().map(|(kind, id)| TxnOp::get(self.key(*kind, id), None)).collect();
        if let Some(f) = &self.fence {
            ops.push(TxnOp::get(f.key.clone(), None));
        }
        ops
    }

    /// Reads every key in `expect` (and the fence key) at one revision.
    pub(super) async fn read_keys(
        &self,
        expect: &BTreeMap<(Kind, String), Expect>,
    ) -> Result<Reads, StoreError> {
        let txn = Txn::new().and_then(self.read_ops(expect));
        let resp = self.txn(Retry::Idempotent, txn).await;
        let resp = resp.map_err(|e| self.unavailable("commit (reading back)", e))?;
        let revision = header_revision(resp.header())?;
        self.parse_reads(expect, revision, &resp.op_responses())
    }

    /// Turns the answers to [`EtcdStore::read_ops`] into tables.
    pub(super) fn parse_reads(
        &self,
        expect: &BTreeMap<(Kind, String), Expect>,
        revision: u64,
        responses: &[TxnOpResponse],
    ) -> Result<Reads, StoreError> {
        let mut got = responses.iter().map(|r| match r {
            TxnOpResponse::Get(g) => Ok(g.kvs().first()),
            _ => Err(StoreError::Unavailable("etcd commit: unexpected answer in the failure branch".into())),
        });
        let mut missing =
            || StoreError::Unavailable("etcd commit: too few answers in the failure branch".into());
        let mut tables = Tables { revision, ..Tables::default() };
        for (kind, id) in expect.keys() {
            let Some(kv) = got.next().ok_or_else(&mut missing)?? else { continue };
            match kind {
                Kind::Node => {
                    tables.nodes.insert(id.clone(), self.decode(kv, id)?);
                }
                Kind::Cluster => {
                    tables.clusters.insert(id.clone(), self.decode(kv, id)?);
                }
            }
        }
        let fence_holds = match &self.fence {
            None => None,
            Some(f) => {
                let kv = got.next().ok_or_else(&mut missing)??;
                Some(kv.is_some_and(|kv| kv.create_revision() == f.create_revision))
            }
        };
        Ok(Reads { revision, tables, fence_holds })
    }

    /// The error of a commit etcd refused, from what its keys held at that point.
    pub(super) fn classify(&self, ops: Vec<Op>, reads: Reads) -> StoreError {
        if reads.fence_holds == Some(false) {
            return StoreError::Fenced;
        }
        let rev = unused_version(&ops, reads.revision.saturating_add(1));
        match reads.tables.stage(&Changes::at(rev.saturating_sub(1)), ops) {
            Err(e) => e,
            // Every compare is implied by staging on what was read, so this cannot be.
            Ok(_) => StoreError::Unavailable(format!(
                "etcd at {} refused a commit that is valid at revision {}; retry",
                self.shared.endpoints, reads.revision
            )),
        }
    }
}

/// For each key `ops` touch, what its first op assumes is stored; and tables holding exactly
/// that (objects assumed present carry the op's object at the op's version).
pub(super) fn assumptions(ops: &[Op]) -> (BTreeMap<(Kind, String), Expect>, Tables) {
    let mut expect = BTreeMap::new();
    let mut base = Tables::default();
    for op in ops {
        let (kind, id, exp) = match op {
            Op::CreateNode(n) => (Kind::Node, &n.id, Expect::Absent),
            Op::CreateCluster(c) => (Kind::Cluster, &c.id, Expect::Absent),
            Op::UpdateNode(n) | Op::DeleteNode(n) => {
                (Kind::Node, &n.id, Expect::Version(version_of(n.meta.as_ref())))
            }
            Op::UpdateCluster(c) => (Kind::Cluster, &c.id, Expect::Version(version_of(c.meta.as_ref()))),
        };
        if expect.contains_key(&(kind, id.clone())) {
            continue;
        }
        expect.insert((kind, id.clone()), exp);
        match op {
            Op::UpdateNode(n) | Op::DeleteNode(n) => {
                base.nodes.insert(n.id.clone(), n.clone());
            }
            Op::UpdateCluster(c) => {
                base.clusters.insert(c.id.clone(), c.clone());
            }
            Op::CreateNode(_) | Op::CreateCluster(_) => {}
        }
    }
    (expect, base)
}

/// The smallest version from `from` on that no op of `ops` carries: the revision staging uses
/// for the commit, so that a second write to an object written earlier in the same commit never
/// matches it (the real revision is only known once etcd applies the transaction).
pub(super) fn unused_version(ops: &[Op], from: u64) -> u64 {
    let used: BTreeSet<u64> = ops
        .iter()
        .map(|op| match op {
            Op::CreateNode(n) | Op::UpdateNode(n) | Op::DeleteNode(n) => version_of(n.meta.as_ref()),
            Op::CreateCluster(c) | Op::UpdateCluster(c) => version_of(c.meta.as_ref()),
        })
        .collect();
    let mut v = from.max(1);
    while used.contains(&v) {
        v = v.saturating_add(1);
    }
    v
}
