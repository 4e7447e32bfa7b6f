//! Protobuf messages of SwarmKit's `docker.swarmkit.v1` package that swarmca uses: the CA RPC
//! messages and the stored `Node`/`Cluster` objects, with SwarmKit's field numbers.

#![forbid(unsafe_code)]

#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/docker.swarmkit.v1.rs"));
}

pub use generated::*;
pub use prost_types;
