//! The `docker.swarmkit.v1.CA` and `NodeCA` gRPC services, generated from `proto/ca.proto`.
//! Message types are re-exported from [`swarmca_types`].

#![forbid(unsafe_code)]

#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod generated {
    tonic::include_proto!("docker.swarmkit.v1");
}

pub use generated::*;

/// swarmca's own administration API (`swarmca.admin.v1`), served on the control socket.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod admin {
    tonic::include_proto!("swarmca.admin.v1");
}
pub use swarmca_types as types;
