//! Untrusted request bytes through decoding, patching, defaulting and validation.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    miniorch_apiserver::fuzz::run(data);
});
