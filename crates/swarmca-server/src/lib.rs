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

mod admin;
pub mod control;
pub mod env;
pub mod error;
pub mod external;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod leadership;
mod manager;
pub mod peer;
pub mod reconciler;
mod rotation;
mod rpc;
mod server;
mod signal;
mod signing;
pub mod tls;

pub use control::Control;
pub use env::{shared_entropy, Clock, OsEntropy, SharedEntropy, SystemClock};
pub use error::{ServerError, INVALID_JOIN_TOKEN};
pub use external::{ExternalCa, ExternalCaError, SignRequest};
pub use leadership::{Election, Solo, Term};
#[cfg(feature = "etcd")]
pub use leadership::EtcdElection;
pub use manager::{Manager, ManagerEvent, Observer, Role, TermEnd, DEFAULT_RETRY_PAUSE};
pub use peer::{CallInfo, PeerCertificates, TlsPeerCertificates};
pub use server::{root_ca_equal_stable, CaServer, ServerConfig, ServerDeps, DEFAULT_RETRY_INTERVAL};
