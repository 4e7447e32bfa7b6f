//! Fuzzing harnesses of the server: the bodies of the cargo-fuzz targets `proto_requests`,
//! `cfssl_response` and `issuance_ops` in `fuzz/fuzz_targets/`, which are one-line calls into
//! this module. Each takes the raw fuzzer input and asserts the properties documented on it; an
//! assertion failure is the finding. The committed seed corpus (`fuzz/seeds/<target>/`) is
//! replayed through them by this crate's tests (`cargo test -p swarmca-testkit`).

// Assertion failures are how a harness reports a finding to libFuzzer; `panic!` is used
// where a message with context beats `assert!`, and for harness setup that cannot fail.
#![allow(clippy::panic)]

mod cfssl;
mod harness;
mod ops;
mod proto;

pub use cfssl::cfssl_response;
pub use ops::issuance_ops;
pub use proto::proto_requests;

#[cfg(test)]
mod tests;
