//! What swarmca's tests, benches, fuzz targets and simulator share, kept out of the crates they
//! test:
//!
//! - [`fuzzing`]: the asserting harnesses behind the server's cargo-fuzz targets
//!   (`proto_requests`, `cfssl_response`, `issuance_ops`; `fuzz/fuzz_targets/` are one-line calls
//!   into them), replayed over the committed seed corpus by this crate's tests;
//! - [`pki`]: test key pairs, certificate requests and node credentials.
//!
//! A test kit: a broken fixture is a bug of the test, so this crate may panic where the crates
//! it tests may not.

#![forbid(unsafe_code)]
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

// The fuzz harnesses drive their own tokio runtime; the simulator (built with `--cfg madsim`)
// uses only `pki`.
#[cfg(not(madsim))]
pub mod fuzzing;
pub mod pki;
