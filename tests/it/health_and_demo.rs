#![allow(clippy::unwrap_used)]
//! `GET /healthz` and the demo page on `GET /` (on by default, 404 when switched off).

use crate::common::*;

#[test]
fn healthz_answers_ok() {
    let server = start(|_| {});
    let response = get(server.local_addr(), "/healthz");
    assert_eq!(response.status, 200, "{}", response.summary());
    assert_eq!(response.body_text(), "ok\n");
    assert_eq!(response.content_length(), Some(3));
}

#[test]
fn healthz_ignores_a_query() {
    let server = start(|_| {});
    let response = get(server.local_addr(), "/healthz?probe=lb");
    assert_eq!(
        (response.status, response.body_text()),
        (200, "ok\n"),
        "{}",
        response.summary()
    );
}

#[test]
fn demo_page_is_served_by_default() {
    assert!(herald::Config::default().demo, "the demo is on by default");
    let server = start(|_| {});
    let response = get(server.local_addr(), "/");
    assert_eq!(response.status, 200, "{}", response.summary());
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/html"),
        "GET / Content-Type {content_type:?}"
    );
    assert_eq!(response.content_length(), Some(response.body.len()));
    let page = response.body_text();
    assert!(
        page.to_ascii_lowercase().contains("<html")
            || page.to_ascii_lowercase().contains("<!doctype html"),
        "GET / is not an HTML page: {:?}",
        &page[..page.len().min(200)]
    );
    assert!(
        page.contains("EventSource"),
        "the demo page subscribes with EventSource"
    );
}

#[test]
fn demo_page_is_404_when_switched_off() {
    let server = start(|config| config.demo = false);
    let addr = server.local_addr();
    assert_error(&get(addr, "/"), 404, "GET / with demo = false");
    assert_healthy(addr, "GET / with demo = false");
}
