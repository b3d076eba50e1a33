//! Log operations and a damaged byte through the write-ahead log's recovery.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    miniorch_store::fuzz::wal(data);
});
