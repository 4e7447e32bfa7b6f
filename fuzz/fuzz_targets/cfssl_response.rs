#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| swarmca_server::fuzzing::cfssl_response(data));
