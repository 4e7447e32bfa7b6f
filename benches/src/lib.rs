//! Benchmarks only: see `benches/ca.rs` and `benches/README.md`.
