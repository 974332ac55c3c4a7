//! The SSE frame encoder round-tripped through a spec-exact EventSource reader; input: an
//! `arbitrary` `FrameInput` (`herald_fuzz::check_frame_bytes`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_fuzz::check_target("sse_frame", data));
