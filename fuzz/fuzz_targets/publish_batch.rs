//! Batch publish bodies, read as NDJSON and as a JSON array; input: query, LF, body
//! (`herald_fuzz::check_publish_batch`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_fuzz::check_target("publish_batch", data));
