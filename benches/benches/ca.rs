//! swarmca's benchmarks (criterion). Run: `cargo bench -p swarmca-benches` (all), or
//! `cargo bench -p swarmca-benches -- sign/` for one group. Figures and how they compare with
//! the goals: benches/README.md.

// Benchmark code: a broken setup should stop the run loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

// The allocator `swarmca serve` runs with (crates/swarmca/src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ring::signature::{
    EcdsaKeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING,
};
use swarmca_core::csr::parse_csr_pem;
use swarmca_core::entropy::Entropy;
use swarmca_core::role::Role;
use swarmca_core::rootca::{digest, generate_root, GeneratedRoot, RootCa, DEFAULT_NODE_CERT_EXPIRY};
use swarmca_core::token::generate_join_token;
use swarmca_proto::node_ca_server::NodeCa;
use swarmca_server::{
    shared_entropy, CaServer, OsEntropy, ServerConfig, ServerDeps, SystemClock, TlsPeerCertificates,
};
use swarmca_store::{MemStore, Node, Op, Store, StoreError};
use swarmca_types::issuance_status::State;
use swarmca_types::node_spec::Membership;
use swarmca_types::{
    Certificate, Cluster, IssuanceStatus, IssueNodeCertificateRequest, JoinTokens,
    NodeCertificateStatusRequest, NodeSpec,
};
use x509_parser::prelude::FromDer;

fn serial() -> [u8; 20] {
    let mut s = [0u8; 20];
    OsEntropy.fill(&mut s).unwrap();
    s
}

fn csr() -> (Vec<u8>, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    (params.serialize_request(&key).unwrap().pem().unwrap().into_bytes(), key)
}

fn root() -> (GeneratedRoot, RootCa) {
    let g = generate_root("swarm-ca", SystemTime::now(), serial()).unwrap();
    let ca =
        RootCa::new(&g.cert_pem, &g.cert_pem, &g.key_pem, DEFAULT_NODE_CERT_EXPIRY, b"", SystemTime::now())
            .unwrap();
    (g, ca)
}

/// CSR parsing and validation; local signing; and the floor: ring's P-256 verify + sign alone.
fn pki(c: &mut Criterion) {
    let (g, ca) = root();
    let (csr_pem, _) = csr();
    let mut group = c.benchmark_group("pki");
    group.throughput(Throughput::Elements(1));
    group.bench_function("csr/parse_verify", |b| b.iter(|| parse_csr_pem(&csr_pem).unwrap()));
    group.bench_function("sign/local_p256", |b| {
        b.iter(|| ca.sign_csr(&csr_pem, "node", Role::Worker, "cluster", SystemTime::now(), [7; 20]).unwrap())
    });
    // The same inputs through ring only: verify the CSR's signature, sign a TBSCertificate of
    // the size sign_csr produces.
    let der = x509_parser::pem::parse_x509_pem(&csr_pem).unwrap().1.contents;
    let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
    let info = req.certification_request_info.raw.to_vec();
    let sig = req.signature_value.data.to_vec();
    let spki_bits = req.certification_request_info.subject_pki.subject_public_key.data.to_vec();
    let leaf_pem =
        ca.sign_csr(&csr_pem, "node", Role::Worker, "cluster", SystemTime::now(), [7; 20]).unwrap();
    let leaf_der = x509_parser::pem::parse_x509_pem(&leaf_pem).unwrap().1.contents;
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
    let tbs = leaf.tbs_certificate.as_ref().to_vec();
    let pkcs8 = x509_parser::pem::parse_x509_pem(&g.key_pem).unwrap().1.contents;
    let rng = ring::rand::SystemRandom::new();
    let ca_key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng).unwrap();
    let ceiling = || {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &spki_bits).verify(&info, &sig).unwrap();
        ca_key.sign(&rng, &tbs).unwrap()
    };
    group.bench_function("ceiling/verify_plus_sign", |b| b.iter(ceiling));
    group.finish();
    if wanted("pki/ratio") {
        let sign =
            || ca.sign_csr(&csr_pem, "node", Role::Worker, "cluster", SystemTime::now(), [7; 20]).unwrap();
        interleaved_ratio(sign, ceiling);
    }
}

/// Whether the command line's filter (criterion's first free argument, a regex it matches
/// against bench names; we only do substring matching) selects `name`.
fn wanted(name: &str) -> bool {
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()) || f.contains("ratio"))
}

/// `pki/ratio`: the ceiling's speed over the pipeline's, measured in alternating short
/// batches so that both see the same machine (a busy neighbour slows both alike). Prints
/// the median and the 10th/90th percentiles of 300 rounds.
fn interleaved_ratio<A, B>(mut pipeline: impl FnMut() -> A, mut floor: impl FnMut() -> B) {
    const BATCH: u32 = 20;
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        for _ in 0..BATCH {
            f();
        }
        t.elapsed().as_secs_f64()
    };
    let mut ratios = Vec::new();
    for round in 0..300 {
        let mut p = || {
            std::hint::black_box(pipeline());
        };
        let mut c = || {
            std::hint::black_box(floor());
        };
        let (tp, tc) = if round % 2 == 0 {
            let tp = time(&mut p);
            (tp, time(&mut c))
        } else {
            let tc = time(&mut c);
            (time(&mut p), tc)
        };
        ratios.push(tc / tp);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "pki/ratio: sign/local_p256 runs at {:.1} % of ceiling/verify_plus_sign (median of 300 interleaved rounds; p10 {:.1} %, p90 {:.1} %)",
        ratios[150] * 100.0,
        ratios[30] * 100.0,
        ratios[270] * 100.0
    );
}

fn cluster(g: &GeneratedRoot, id: &str) -> (Cluster, JoinTokens) {
    let d = digest(&g.cert_pem);
    let tokens = JoinTokens {
        worker: generate_join_token(&d, false, &mut OsEntropy).unwrap(),
        manager: generate_join_token(&d, false, &mut OsEntropy).unwrap(),
    };
    let c = swarmca_core::cluster::new_cluster(id, &g.cert_pem, &g.key_pem, tokens.clone(), None);
    (c, tokens)
}

/// A running CA server for cluster `c` on `store`, with `parallel` signing jobs.
async fn running(store: Arc<dyn Store>, c: Cluster, ca: &RootCa, parallel: usize) -> CaServer {
    let mut cfg = ServerConfig::new(c.id.clone());
    store.commit(vec![Op::CreateCluster(c)]).await.unwrap();
    cfg.max_parallel_signing = parallel;
    let deps = ServerDeps {
        store,
        clock: Arc::new(SystemClock),
        entropy: shared_entropy(OsEntropy),
        peers: Arc::new(TlsPeerCertificates),
    };
    let server = CaServer::new(cfg, deps, Some(ca.clone()));
    let s = server.clone();
    tokio::spawn(async move { s.run().await });
    server.ready().await;
    server
}

/// One in-process join: IssueNodeCertificate, then NodeCertificateStatus until ISSUED.
async fn join_in_process(server: &CaServer, csr: Vec<u8>, token: &str) {
    let id = server
        .issue_node_certificate(tonic::Request::new(IssueNodeCertificateRequest {
            csr,
            token: token.to_string(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .node_id;
    let r = server
        .node_certificate_status(tonic::Request::new(NodeCertificateStatusRequest { node_id: id }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.unwrap().state, State::Issued as i32);
}

/// IssueNodeCertificate → ISSUED on the in-memory store, no network, one core (a
/// current-thread runtime), 64 joins in flight. CSRs are made beforehand.
fn issue_in_process(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (g, ca) = root();
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let (cl, tokens) = cluster(&g, "bench");
    let server = rt.block_on(running(store, cl, &ca, 2));
    let token = tokens.worker;
    let csrs: Vec<Vec<u8>> = (0..512).map(|_| csr().0).collect();
    let mut group = c.benchmark_group("issue");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.bench_function("in_process", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                let mut done = 0u64;
                while done < iters {
                    let batch = (iters - done).min(64);
                    let mut tasks = Vec::new();
                    for i in 0..batch {
                        let (s, csr, t) =
                            (server.clone(), csrs[(done + i) as usize % csrs.len()].clone(), token.clone());
                        tasks.push(tokio::spawn(async move { join_in_process(&s, csr, &t).await }));
                    }
                    for t in tasks {
                        t.await.unwrap();
                    }
                    done += batch;
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

fn node(id: &str, state: State) -> Node {
    Node {
        id: id.to_string(),
        spec: Some(NodeSpec { membership: Membership::Accepted as i32, ..Default::default() }),
        certificate: Some(Certificate {
            csr: b"csr".to_vec(),
            status: Some(IssuanceStatus { state: state as i32, err: String::new() }),
            cn: id.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Two writers updating one node on the in-memory store: read, modify, commit, re-read on a
/// sequence conflict. Time per successful update.
fn store_conflicts(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = MemStore::new();
    store.commit_sync(vec![Op::CreateNode(node("n", State::Issued))]).unwrap();
    let conflicts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(2));
    group.bench_function("update_under_conflict", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                let writer = |store: MemStore, conflicts: Arc<std::sync::atomic::AtomicU64>| async move {
                    for _ in 0..iters {
                        loop {
                            let mut n = store.get_node("n").await.unwrap().unwrap();
                            n.role ^= 1;
                            tokio::task::yield_now().await;
                            match store.commit(vec![Op::UpdateNode(n)]).await {
                                Ok(_) => break,
                                Err(StoreError::SequenceConflict) => {
                                    conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                };
                let a = tokio::spawn(writer(store.clone(), conflicts.clone()));
                let b2 = tokio::spawn(writer(store.clone(), conflicts.clone()));
                a.await.unwrap();
                b2.await.unwrap();
                start.elapsed()
            })
        })
    });
    group.finish();
    eprintln!(
        "store/update_under_conflict: {} sequence conflicts retried",
        conflicts.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// A follower on an in-memory store (cluster "bench", a fresh root), running and ready: it
/// serves status without signing, so only the benchmark writes ISSUED.
fn follower(rt: &tokio::runtime::Runtime) -> (GeneratedRoot, RootCa, MemStore, CaServer) {
    let (g, ca) = root();
    let store = MemStore::new();
    let (cl, _) = cluster(&g, "bench");
    store.commit_sync(vec![Op::CreateCluster(cl)]).unwrap();
    let deps = ServerDeps {
        store: Arc::new(store.clone()),
        clock: Arc::new(SystemClock),
        entropy: shared_entropy(OsEntropy),
        peers: Arc::new(TlsPeerCertificates),
    };
    let server = CaServer::new(ServerConfig::new("bench"), deps, Some(ca.clone()));
    let s = server.clone();
    rt.spawn(async move { s.run_follower().await });
    rt.block_on(server.ready());
    (g, ca, store, server)
}

/// An ISSUED write wakes a waiting NodeCertificateStatus: time from the start of the commit to
/// the answer. Prints p50/p99 over every sample besides criterion's mean.
fn status_wakeup(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (_, _, store, server) = follower(&rt);
    let samples = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let counter = std::sync::atomic::AtomicU64::new(0);
    let mut group = c.benchmark_group("status");
    group.bench_function("wakeup", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let id = format!("n{}", counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
                    store.commit(vec![Op::CreateNode(node(&id, State::Pending))]).await.unwrap();
                    let (s, id2) = (server.clone(), id.clone());
                    let waiter = tokio::spawn(async move {
                        let r = s
                            .node_certificate_status(tonic::Request::new(NodeCertificateStatusRequest {
                                node_id: id2,
                            }))
                            .await;
                        (Instant::now(), r.is_ok())
                    });
                    // Let the status call register its watch.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let mut n = store.get_node(&id).await.unwrap().unwrap();
                    if let Some(c) = n.certificate.as_mut() {
                        c.status = Some(IssuanceStatus { state: State::Issued as i32, err: String::new() });
                        c.certificate = b"cert".to_vec();
                    }
                    let t0 = Instant::now();
                    store.commit(vec![Op::UpdateNode(n)]).await.unwrap();
                    let (t1, ok) = waiter.await.unwrap();
                    assert!(ok);
                    let d = t1.duration_since(t0);
                    samples.lock().unwrap().push(d);
                    total += d;
                }
                total
            })
        })
    });
    group.finish();
    let mut v = samples.lock().unwrap().clone();
    v.sort();
    if !v.is_empty() {
        let pct = |p: f64| v[((v.len() as f64 - 1.0) * p) as usize];
        eprintln!(
            "status/wakeup over {} samples: p50 {:?}, p99 {:?}, max {:?}",
            v.len(),
            pct(0.5),
            pct(0.99),
            v[v.len() - 1]
        );
    }
}

/// End to end: real tonic + mTLS on loopback, the embedded persistent store (redb, fsync per
/// commit group), 2 worker threads, N concurrent clients each on its own TLS connection.
fn grpc_join_loopback(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (g, ca) = root();
    let dir = std::env::temp_dir().join(format!("swarmca-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store: Arc<dyn Store> = Arc::new(swarmca_store::RedbStore::open(&dir.join("bench.redb")).unwrap());
    let (cl, tokens) = cluster(&g, "bench");
    let server = rt.block_on(running(store, cl, &ca, 64));
    let addr = rt.block_on(serve_tls(server, &g, &ca));
    let csrs: Vec<Vec<u8>> = (0..1024).map(|_| csr().0).collect();
    let mut group = c.benchmark_group("grpc");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    for clients in [1usize, 16, 64, 256, 512] {
        group.throughput(Throughput::Elements(1));
        let channels: Vec<_> = rt.block_on(async {
            let mut v = Vec::new();
            for _ in 0..clients {
                v.push(tls_client(addr, &g).await);
            }
            v
        });
        group.bench_with_input(BenchmarkId::new("join_loopback", clients), &clients, |b, &clients| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    let per = iters.div_ceil(clients as u64);
                    let mut tasks = Vec::new();
                    for (ci, client) in channels.iter().enumerate() {
                        let (mut client, csrs, token) = (client.clone(), csrs.clone(), tokens.worker.clone());
                        tasks.push(tokio::spawn(async move {
                            for i in 0..per {
                                let csr = csrs[(ci * 7919 + i as usize) % csrs.len()].clone();
                                let id = client
                                    .issue_node_certificate(IssueNodeCertificateRequest {
                                        csr,
                                        token: token.clone(),
                                        ..Default::default()
                                    })
                                    .await
                                    .unwrap()
                                    .into_inner()
                                    .node_id;
                                let r = client
                                    .node_certificate_status(NodeCertificateStatusRequest { node_id: id })
                                    .await
                                    .unwrap()
                                    .into_inner();
                                assert_eq!(r.status.unwrap().state, State::Issued as i32);
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.unwrap();
                    }
                    // Normalise to exactly `iters` joins.
                    start.elapsed().mul_f64(iters as f64 / (per * clients as u64) as f64)
                })
            })
        });
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Serves `server`'s NodeCA service over mTLS on a loopback port (a manager certificate
/// from `ca`), in the background; returns the address.
async fn serve_tls(server: CaServer, g: &GeneratedRoot, ca: &RootCa) -> std::net::SocketAddr {
    let (mcsr, mkey) = csr();
    let mcert = ca.sign_csr(&mcsr, "manager", Role::Manager, "bench", SystemTime::now(), serial()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = swarmca_server::tls::server_tls_config(&mcert, mkey.serialize_pem().as_bytes(), &g.cert_pem);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(swarmca_proto::node_ca_server::NodeCaServer::new(server))
            .serve_with_incoming(nodelay(listener))
            .await
    });
    addr
}

/// Accepted connections with TCP_NODELAY, as `swarmca serve`'s listener sets it (without it a
/// response split over two writes waits for the client's delayed ACK).
fn nodelay(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|r| {
        r.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    })
}

/// An anonymous NodeCA client on its own TLS connection to `addr`.
async fn tls_client(
    addr: std::net::SocketAddr,
    g: &GeneratedRoot,
) -> swarmca_proto::node_ca_client::NodeCaClient<tonic::transport::Channel> {
    let cfg = swarmca_server::tls::client_tls_config(&g.cert_pem, "swarm-ca", None);
    let ch = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(cfg)
        .unwrap()
        .connect()
        .await
        .unwrap();
    swarmca_proto::node_ca_client::NodeCaClient::new(ch)
}

/// The resident set size of this process, in KiB (Linux).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `status/hold`: N (default 10,000; `SWARMCA_BENCH_HOLD=N`) NodeCertificateStatus calls for
/// PENDING nodes held at once over mTLS on loopback (200 connections), then all released by
/// ISSUED writes. Not a criterion measurement: prints the time to register every call, the
/// memory they hold, and the time to answer them all; fails on any error.
fn status_hold(_c: &mut Criterion) {
    if !wanted("status/hold") {
        return;
    }
    let n: usize = std::env::var("SWARMCA_BENCH_HOLD").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    const CONNECTIONS: usize = 200;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (g, ca, store, server) = follower(&rt);
    let ids: Vec<String> = (0..n).map(|i| format!("hold{i:06}")).collect();
    for chunk in ids.chunks(500) {
        store.commit_sync(chunk.iter().map(|id| Op::CreateNode(node(id, State::Pending))).collect()).unwrap();
    }
    let addr = rt.block_on(serve_tls(server.clone(), &g, &ca));
    let clients: Vec<_> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..CONNECTIONS {
            v.push(tls_client(addr, &g).await);
        }
        v
    });
    let watchers_before = store.watcher_count();
    let rss_before = rss_kib();
    let start = Instant::now();
    let calls: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut client = clients[i % CONNECTIONS].clone();
            let id = id.clone();
            rt.spawn(async move {
                client
                    .node_certificate_status(NodeCertificateStatusRequest { node_id: id })
                    .await
                    .map(|r| r.into_inner())
            })
        })
        .collect();
    while store.watcher_count() < watchers_before + n {
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "only {} calls registered",
            store.watcher_count() - watchers_before
        );
        assert!(calls.iter().all(|c| !c.is_finished()), "a status call ended before any node was issued");
    }
    let registered = start.elapsed();
    let rss_held = rss_kib();
    // Hold them all for a while: none may end.
    std::thread::sleep(Duration::from_secs(5));
    assert!(calls.iter().all(|c| !c.is_finished()), "a held status call ended early");
    let release = Instant::now();
    for chunk in ids.chunks(500) {
        let ops = chunk
            .iter()
            .map(|id| {
                let mut n = rt.block_on(store.get_node(id)).unwrap().unwrap();
                if let Some(c) = n.certificate.as_mut() {
                    c.status = Some(IssuanceStatus { state: State::Issued as i32, err: String::new() });
                    c.certificate = b"cert".to_vec();
                }
                Op::UpdateNode(n)
            })
            .collect();
        store.commit_sync(ops).unwrap();
    }
    let issued = rt.block_on(async {
        let mut ok = 0;
        for c in calls {
            let r = c.await.unwrap().unwrap();
            assert_eq!(r.status.unwrap().state, State::Issued as i32);
            ok += 1;
        }
        ok
    });
    let released = release.elapsed();
    println!(
        "status/hold: {issued} concurrent NodeCertificateStatus calls over {CONNECTIONS} mTLS connections: \
         registered in {registered:.2?}, held 5 s with no error, all answered ISSUED {released:.2?} after the first \
         write; RSS {} MiB before the calls, {} MiB while held ({:.1} KiB per held call)",
        rss_before / 1024,
        rss_held / 1024,
        (rss_held.saturating_sub(rss_before)) as f64 / n as f64
    );
}

criterion_group!(
    benches,
    pki,
    issue_in_process,
    store_conflicts,
    status_wakeup,
    grpc_join_loopback,
    status_hold
);
criterion_main!(benches);
