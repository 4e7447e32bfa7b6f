//! Integration tests of swarmca live in `it/` (one test binary); this library is empty.
