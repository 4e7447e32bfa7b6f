//! One integration test binary: real tonic servers with mTLS on loopback, plus in-process calls
//! where a test needs to reach between the store and the server.

// Test code: panicking on a broken expectation is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod cfssl;
mod cli;
mod cli_rotation;
mod conformance;
mod custody;
mod defects;
mod external;
mod fixture;
mod ha;
mod hsm;
mod lifecycle;
mod persist;
mod rotation;
