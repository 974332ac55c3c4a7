//! `application/x-www-form-urlencoded` publish bodies; input: query, LF, body
//! (`herald_fuzz::check_publish` with `form_body`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_fuzz::check_target("publish_form", data));
