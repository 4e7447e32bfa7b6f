#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| swarmca_core::fuzzing::csr_pem(data));
