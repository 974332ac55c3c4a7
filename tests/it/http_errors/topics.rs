//! `/events` requests with bad topics: none, invalid, too many (400); every allowed topic
//! character and the longest name are accepted, and the limit is configurable.

use super::*;

// --- /events ---------------------------------------------------------------------------------

#[test]
fn events_without_topic_is_400() {
    let server = start(|_| {});
    let addr = server.local_addr();
    for target in [
        "/events",
        "/events?",
        "/events?other=1",
        "/events?lastEventId=1-1",
    ] {
        check(
            addr,
            &format!("GET {target}"),
            &raw("GET", target, &[], b""),
            400,
            false,
        );
    }
}

#[test]
fn events_with_an_invalid_topic_is_400() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let too_long = "t".repeat(129);
    for topic in [
        "",
        "a b",
        "café",
        "a!b",
        "a#b",
        "a\"b",
        "a,b",
        "a\nb",
        too_long.as_str(),
    ] {
        let target = events_target(&["ok", topic], None);
        check(
            addr,
            &format!("GET {target}"),
            &raw("GET", &target, &[], b""),
            400,
            false,
        );
    }
}

#[test]
fn every_allowed_topic_character_and_the_longest_name_are_accepted() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let longest = "L".repeat(128);
    let special = "AZaz09_-.:/@~";
    let mut subscriber = subscribe(addr, &[special, &longest]);
    let id = publish_form(
        addr,
        &[("topic", special), ("topic", &longest), ("data", "ok")],
    );
    let event = subscriber.next_event("the event on the special topics");
    assert_eq!(
        (event.data.as_str(), event.last_event_id.as_str()),
        ("ok", id.as_str())
    );
}

#[test]
fn max_topic_bytes_is_configurable() {
    let server = start(|config| config.max_topic_bytes = 4);
    let addr = server.local_addr();
    subscribe(addr, &["abcd"]);
    let target = events_target(&["abcde"], None);
    check(
        addr,
        "a 5-byte topic with max_topic_bytes = 4",
        &raw("GET", &target, &[], b""),
        400,
        false,
    );
}

#[test]
fn events_with_too_many_topics_is_400() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let names: Vec<String> = (0..17).map(|i| format!("t{i}")).collect();
    let topics: Vec<&str> = names.iter().map(String::as_str).collect();
    subscribe(addr, &topics[..16]);
    let target = events_target(&topics, None);
    check(
        addr,
        "GET /events with 17 topics",
        &raw("GET", &target, &[], b""),
        400,
        false,
    );

    let server = start(|config| config.max_topics_per_subscription = 2);
    let addr = server.local_addr();
    subscribe(addr, &topics[..2]);
    let target = events_target(&topics[..3], None);
    check(
        addr,
        "GET /events with 3 topics and max_topics_per_subscription = 2",
        &raw("GET", &target, &[], b""),
        400,
        false,
    );
}
