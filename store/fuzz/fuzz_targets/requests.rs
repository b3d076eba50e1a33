//! Untrusted request bytes through decoding, validation and the state machine's apply.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    miniorch_store::fuzz::run(data);
});
