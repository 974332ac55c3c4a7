//! `application/x-www-form-urlencoded` publish bodies. Input: the query string, LF, the body.

#![no_main]

use herald::bench_support::PublishFormat;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    herald_fuzz::check_publish(PublishFormat::Form, data, |event| {
        let mut body = form_urlencoded::Serializer::new(String::new());
        for topic in &event.topics {
            body.append_pair("topic", topic);
        }
        if let Some(name) = &event.name {
            body.append_pair("event", name);
        }
        if let Some(retry_ms) = event.retry_ms {
            body.append_pair("retry", &retry_ms.to_string());
        }
        body.append_pair("data", &event.data);
        (String::new(), body.finish().into_bytes())
    });
});
