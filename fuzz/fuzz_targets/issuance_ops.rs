#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| swarmca_testkit::fuzzing::issuance_ops(data));
