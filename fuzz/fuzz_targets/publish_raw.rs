//! Raw publish bodies (the body is the data); input: query, LF, body
//! (`herald_fuzz::check_publish` with `raw_body`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_fuzz::check_target("publish_raw", data));
