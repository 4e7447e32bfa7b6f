//! The `docker.swarmkit.v1.CA` and `NodeCA` gRPC services, generated from `proto/ca.proto`.
//! Message types are re-exported from [`swarmca_types`].

#![forbid(unsafe_code)]

#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod generated {
    tonic::include_proto!("docker.swarmkit.v1");
}

pub use generated::*;
pub use swarmca_types as types;
