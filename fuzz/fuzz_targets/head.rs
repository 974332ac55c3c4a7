//! Request heads: httparse plus herald's framing rules, then routing, subscription query,
//! bearer token, cookie and publish format. See `herald_fuzz::check_head` for the properties.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_fuzz::check_head(data));
