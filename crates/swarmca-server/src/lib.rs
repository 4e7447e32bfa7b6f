//! The swarmca CA server: SwarmKit's `CA` and `NodeCA` gRPC services over a versioned store.
//!
//! This is the only swarmca crate doing IO. It names `tokio` and `tonic`, which the workspace
//! maps to `madsim-tokio` and `madsim-tonic`, so the same code runs on real sockets and under the
//! madsim simulator. Everything that differs between the two worlds — the store, the clock,
//! entropy, and where a caller's certificate comes from — is passed in through [`ServerDeps`].
//!
//! ```text
//! CaServer::new(cfg, deps, root)      a stopped server
//!   .run()                            leader term: load signer, sign pending, follow the store
//!   .stop()                           end the term, wait for the loop
//! swarmca_proto::{ca_server::CaServer, node_ca_server::NodeCaServer}::new(server.clone())
//!                                     the tonic services to mount
//! ```

#![forbid(unsafe_code)]

// Layers, each importing only from the ones above it (scripts/check-layers keeps it so; see
// ARCHITECTURE.md): the environment and its seams (env, signal, error, peer, tls, leadership,
// external, custody), the signer (signer), shared state (server), issuance decisions (issuers), the RPC
// front (rpc), a term's duties (duties), a manager's life (manager), the control API (control,
// rotation, admin), a manager put together (launch), the locked control socket and a manager's
// start (unlock).
mod admin;
pub mod bootstrap;
pub mod control;
pub mod custody;
mod duties;
pub mod env;
pub mod error;
pub mod external;
pub mod files;
mod issuers;
pub use issuers::trust_pem;
pub mod launch;
pub mod leadership;
pub mod listener;
mod manager;
pub mod peer;
#[cfg(feature = "pkcs11")]
pub mod pkcs11;
mod rotation;
mod rpc;
pub mod selfcert;
mod server;
mod signal;
mod signer;
pub mod tls;
pub mod unlock;

pub use duties::reconciler;

pub use control::Control;
pub use env::{shared_entropy, Clock, OsEntropy, SharedEntropy, SystemClock};
pub use error::{ServerError, INVALID_JOIN_TOKEN};
pub use external::{ExternalCa, ExternalCaError, SignRequest};
#[cfg(feature = "etcd")]
pub use leadership::EtcdElection;
pub use leadership::{Election, Solo, Term};
pub use manager::{Manager, ManagerEvent, Observer, Role, TermEnd, DEFAULT_RETRY_PAUSE};
pub use peer::{CallInfo, PeerCertificates, TlsPeerCertificates};
pub use server::{
    CaServer, ServerConfig, ServerDeps, DEFAULT_RETRY_INTERVAL, DEFAULT_ROOT_RECONCILE_INTERVAL,
};
pub use signer::root_ca_equal_stable;
