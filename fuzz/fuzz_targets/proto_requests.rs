#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| swarmca_testkit::fuzzing::proto_requests(data));
