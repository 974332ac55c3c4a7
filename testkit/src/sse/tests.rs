//! The parser against the spec's examples and every rule of its module doc, each input parsed
//! whole, split at every position and byte by byte.

use super::*;

fn event(event_type: &str, data: &str, last_event_id: &str) -> SseEvent {
    SseEvent {
        event_type: event_type.to_owned(),
        data: data.to_owned(),
        last_event_id: last_event_id.to_owned(),
    }
}

fn message(data: &str) -> SseEvent {
    event("message", data, "")
}

/// Parses `input` whole, split at every position, and byte by byte; all must agree with
/// `expected`.
fn check(input: &[u8], expected: &[SseEvent]) {
    assert_eq!(parse_stream(input), expected, "whole input {input:?}");
    for split in 0..=input.len() {
        let mut collector = SseCollector::new();
        let mut events = collector.feed(&input[..split]);
        events.extend(collector.feed(&input[split..]));
        assert_eq!(events, expected, "input {input:?} split at {split}");
    }
    let mut collector = SseCollector::new();
    let events: Vec<SseEvent> = input.iter().flat_map(|b| collector.feed(&[*b])).collect();
    assert_eq!(events, expected, "input {input:?} fed byte by byte");
}

#[test]
fn spec_example_data_lines_are_joined_with_lf() {
    check(
        b"data: YHOO\ndata: +2\ndata: 10\n\n",
        &[message("YHOO\n+2\n10")],
    );
}

#[test]
fn spec_example_comment_id_reset_and_leading_space() {
    check(
        b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
        &[
            event("message", "first event", "1"),
            event("message", "second event", ""),
            event("message", " third event", ""),
        ],
    );
}

#[test]
fn spec_example_empty_data_and_unterminated_event() {
    check(
        b"data\n\ndata\ndata\n\ndata:",
        &[message(""), message("\n")],
    );
}

#[test]
fn spec_example_space_after_colon_is_optional() {
    check(
        b"data:test\n\ndata: test\n\n",
        &[message("test"), message("test")],
    );
}

#[test]
fn herald_frames() {
    check(
        b"retry: 3000\n\nid: 1-1\ndata: seq=0 ts=5 xx\n\nid: 1-2\nevent: alert\ndata: b\n\n",
        &[
            event("message", "seq=0 ts=5 xx", "1-1"),
            event("alert", "b", "1-2"),
        ],
    );
}

#[test]
fn cr_lf_and_crlf_all_end_lines() {
    check(
        b"data: a\rdata: b\r\ndata: c\ndata: d\r\r\n",
        &[message("a\nb\nc\nd")],
    );
    check(b"data: x\r\rdata: y\n\n", &[message("x"), message("y")]);
    check(b"data: x\r\n\r\ndata: y\r\r", &[message("x"), message("y")]);
    check(
        b"id: a\r\ndata: x\r\n\r\nid: b\rdata: y\r\rid: c\ndata: z\n\n",
        &[
            event("message", "x", "a"),
            event("message", "y", "b"),
            event("message", "z", "c"),
        ],
    );
}

#[test]
fn cr_then_lf_in_separate_chunks_is_one_line_end() {
    let mut collector = SseCollector::new();
    assert_eq!(collector.feed(b"data: a\r"), vec![]);
    assert_eq!(collector.feed(b"\ndata: b\r"), vec![]);
    assert_eq!(collector.feed(b"\n"), vec![]);
    assert_eq!(collector.feed(b"\r"), vec![message("a\nb")]);
    assert_eq!(collector.feed(b"\n"), vec![]);
}

#[test]
fn one_leading_bom_is_dropped() {
    check(b"\xEF\xBB\xBFdata: x\n\n", &[message("x")]);
    // A second BOM belongs to the field name `\u{feff}data`, an unknown field.
    check(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: x\n\n", &[]);
    check(
        b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\ndata: b\n\n",
        &[message("b")],
    );
    // A BOM later in the stream is content.
    check(b"data: \xEF\xBB\xBFx\n\n", &[message("\u{feff}x")]);
    // A partial BOM is not a BOM: the decoder replaces it.
    check(b"\xEF\xBBdata: x\n\ndata: y\n\n", &[message("y")]);
}

#[test]
fn invalid_utf8_becomes_replacement_characters() {
    check(b"data: a\xFFb\n\n", &[message("a\u{fffd}b")]);
    check(b"data: \xE2\x82\n\n", &[message("\u{fffd}")]);
    // An incomplete sequence at a line end is replaced as if the stream were decoded whole.
    check(
        b"data: a\xE2\x82\ndata: \xAC\n\n",
        &[message("a\u{fffd}\n\u{fffd}")],
    );
    check("data: é世🚀\n\n".as_bytes(), &[message("é世🚀")]);
}

#[test]
fn event_field_sets_the_type_for_one_event_only() {
    check(
        b"event: add\ndata: 1\n\ndata: 2\n\nevent: a\nevent: b\ndata: 3\n\n",
        &[event("add", "1", ""), message("2"), event("b", "3", "")],
    );
    check(b"event:\ndata: x\n\n", &[message("x")]);
}

#[test]
fn empty_data_buffer_dispatches_nothing_and_resets_the_type() {
    check(b"event: e\n\ndata: x\n\n", &[message("x")]);
    check(b"id: 1\nevent: e\nretry: 5\n\n", &[]);
    check(b"\n\n\n", &[]);
}

#[test]
fn id_persists_and_ids_with_nul_are_ignored() {
    check(
        b"id: 7\ndata: a\n\ndata: b\n\nid: 8\x009\ndata: c\n\nid\ndata: d\n\n",
        &[
            event("message", "a", "7"),
            event("message", "b", "7"),
            event("message", "c", "7"),
            event("message", "d", ""),
        ],
    );
    check(
        b"id: 7\n\nevent: x\n\ndata: a\n\nid\ndata: b\n\n",
        &[event("message", "a", "7"), message("b")],
    );
    let mut collector = SseCollector::new();
    assert_eq!(collector.feed(b"id: 42\n\n"), vec![]);
    assert_eq!(collector.last_event_id, "42");
    // The buffer only becomes the last event ID at dispatch.
    assert_eq!(collector.feed(b"id: 43\n"), vec![]);
    assert_eq!(collector.last_event_id, "42");
    assert_eq!(collector.feed(b"\n"), vec![]);
    assert_eq!(collector.last_event_id, "43");
}

#[test]
fn retry_accepts_ascii_digits_only() {
    let retry = |input: &[u8]| {
        let mut collector = SseCollector::new();
        collector.feed(input);
        collector.retry_ms
    };
    assert_eq!(retry(b"retry: 1500\n"), Some(1500));
    assert_eq!(retry(b"retry:1500\n"), Some(1500));
    assert_eq!(retry(b"retry: 1500\nretry: 15x\n"), Some(1500));
    assert_eq!(retry(b"retry: 99999999999999999999999\n"), Some(u64::MAX));
    assert_eq!(retry(b"retry:  1500\n"), None);
    assert_eq!(retry(b"retry: -1\n"), None);
    assert_eq!(retry(b"retry: 1.5\n"), None);
    assert_eq!(retry(b"retry\n"), None);
    assert_eq!(retry(b"retry: \n"), None);
    assert_eq!(
        retry(b"retry: 1500"),
        None,
        "an unfinished line is not a field"
    );
}

#[test]
fn fields_without_colon_unknown_fields_and_comments() {
    check(
        b"foo: bar\n:comment\n: another\ndata\ndata:x\ndata::y\n\n",
        &[message("\nx\n:y")],
    );
    check(
        b": hi\n\ndata:one\ndata: two\ndata\nevent:e\nretry: 5\nbogus: 1\n\n",
        &[event("e", "one\ntwo\n", "")],
    );
    let mut collector = SseCollector::new();
    collector.feed(b": ping\n:\n");
    assert_eq!(collector.comments, vec![" ping".to_owned(), String::new()]);
    check(b"Data: x\n\n", &[]);
    check(b"data : x\n\n", &[]);
}

#[test]
fn only_one_space_after_the_colon_is_dropped() {
    check(b"data:  two\n\n", &[message(" two")]);
    check(b"data:\tx\n\n", &[message("\tx")]);
    check(b"data: \n\n", &[message("")]);
}

#[test]
fn unterminated_event_at_end_of_stream_is_discarded() {
    check(b"data: done\n\ndata: pending\n", &[message("done")]);
    check(b"data: done\n\ndata: pending", &[message("done")]);
}

#[test]
fn a_long_stream_with_every_feature_survives_every_split() {
    let input =
        "\u{feff}: hello\r\nretry: 10\r\n\r\nid: 1\nevent: add\ndata: a\r\ndata:b\rdata\n\n\
                 id: 2\u{0}\ndata: é世🚀\r\n\r\ndata: x\r\r:c\nevent: e\nid: 3\n\nid\ndata:  y\n\n"
            .as_bytes();
    check(
        input,
        &[
            event("add", "a\nb\n", "1"),
            event("message", "é世🚀", "1"),
            event("message", "x", "1"),
            event("message", " y", ""),
        ],
    );
}

#[test]
fn items_come_in_stream_order_and_borrow_the_raw_bytes() {
    let mut parser = SseParser::new();
    let mut items = Vec::new();
    parser
        .feed(b": a\xFF\nretry: 7\nevent: e\ndata: d\n\n", &mut |item| {
            items.push(match item {
                Item::Event(e) => format!("event {:?} {:?} {:?}", e.event_type(), e.data, e.id),
                Item::Comment(text) => format!("comment {text:?}"),
                Item::Retry(ms) => format!("retry {ms}"),
            })
        })
        .unwrap();
    assert_eq!(
        items,
        [
            format!("comment {:?}", b" a\xFF"),
            "retry 7".to_owned(),
            format!("event {:?} {:?} {:?}", b"e", b"d", b""),
        ]
    );
}

#[test]
fn resumed_keeps_last_id() {
    let mut parser = SseParser::resumed(b"9".to_vec());
    let mut ids = Vec::new();
    parser
        .feed(b"data: a\n\n", &mut |item| {
            if let Item::Event(e) = item {
                ids.push(e.id.to_vec());
            }
        })
        .unwrap();
    assert_eq!(ids, vec![b"9".to_vec()]);
    assert_eq!(parser.last_id(), b"9");
}

#[test]
fn cut_off_event_does_not_move_last_id() {
    let mut parser = SseParser::new();
    parser
        .feed(b"id: 1\ndata: a\n\nid: 2\ndata: b\n", &mut |_| {})
        .unwrap();
    assert_eq!(parser.last_id(), b"1");
    parser.feed(b"\n", &mut |_| {}).unwrap();
    assert_eq!(parser.last_id(), b"2");
}

#[test]
fn long_line_is_refused() {
    let mut parser = SseParser::new();
    let line = vec![b'a'; LINE_BYTES_MAX + 1];
    assert_eq!(parser.feed(&line, &mut |_| {}), Err(SseError::LineTooLong));
    let mut parser = SseParser::new();
    assert_eq!(parser.feed(&line[1..], &mut |_| {}), Ok(()));
}

#[test]
fn large_event_is_refused() {
    let mut parser = SseParser::with_limits(16, 8);
    assert_eq!(parser.feed(b"data: 1234567\n", &mut |_| {}), Ok(()));
    assert_eq!(
        parser.feed(b"data: \n", &mut |_| {}),
        Err(SseError::EventTooLarge)
    );
}

#[test]
#[should_panic(expected = "comment lines")]
fn a_collector_refuses_endless_comments() {
    let mut collector = SseCollector::new();
    collector.feed(&b":\n".repeat(COLLECTOR_COMMENTS_MAX));
    assert_eq!(
        collector.comments.len(),
        COLLECTOR_COMMENTS_MAX,
        "the cap itself is kept"
    );
    collector.feed(b":\n");
}
