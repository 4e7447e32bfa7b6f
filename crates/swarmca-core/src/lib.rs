//! Pure PKI and policy core of swarmca, a wire-compatible port of Docker SwarmKit's CA.
//!
//! This crate performs no IO and reads no clock: every time-dependent function takes `now`,
//! and randomness (node IDs, join-token secrets, certificate serials) comes in through
//! [`entropy::Entropy`] or as explicit byte arrays.
//!
//! The one exception is *ring*'s `SystemRandom`, which is used inside ECDSA signing (nonces)
//! and when a new root key is generated ([`rootca::generate_root`]). *ring* offers no way to
//! inject those, so they are unavoidable; everything else is deterministic.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod base36;
pub mod cluster;
pub mod csr;
mod der;
pub mod entropy;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod id;
pub mod identity;
pub mod pem;
mod pemutil;
pub mod policy;
pub mod role;
pub mod rootca;
pub mod seal;
pub mod token;
