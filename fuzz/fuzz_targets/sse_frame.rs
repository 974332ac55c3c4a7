//! The SSE frame encoder, round-tripped through a spec-exact EventSource reader: arbitrary
//! data (line breaks become LF), event names (herald's rule restated), ids and retry hints.

#![no_main]

use arbitrary::Arbitrary;
use herald::bench_support::event_name_is_valid;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Bus ids are `<sequence>-<epoch>`.
    sequence: u64,
    epoch: u64,
    name: Option<String>,
    retry_ms: Option<u32>,
    data: String,
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    if let Some(name) = &input.name {
        assert_eq!(
            event_name_is_valid(name),
            herald_fuzz::name_is_valid(name),
            "name {name:?}"
        );
        if !event_name_is_valid(name) {
            return;
        }
    }
    let id = format!("{}-{}", input.sequence, input.epoch);
    herald_fuzz::check_frame(&id, input.name.as_deref(), &input.data, input.retry_ms);
});
