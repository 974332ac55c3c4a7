//! `application/json` publish bodies; input: query, LF, body
//! (`herald_fuzz::check_publish` with `json_body`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_fuzz::check_target("publish_json", data));
