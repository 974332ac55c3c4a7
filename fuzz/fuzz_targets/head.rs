//! Request heads: httparse and herald's framing rules, then routing, the subscription query,
//! bearer token, cookie and publish format (`herald_fuzz::check_head`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_fuzz::check_target("head", data));
