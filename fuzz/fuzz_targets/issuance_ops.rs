#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| swarmca_server::fuzzing::issuance_ops(data));
