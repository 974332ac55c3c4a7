//! Raw (`text/plain`) publish bodies: the body is the data, the rest comes from the query.
//! Input: the query string, LF, the body.

#![no_main]

use herald::bench_support::PublishFormat;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    herald_fuzz::check_publish(PublishFormat::Raw, data, |event| {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for topic in &event.topics {
            query.append_pair("topic", topic);
        }
        if let Some(name) = &event.name {
            query.append_pair("event", name);
        }
        if let Some(retry_ms) = event.retry_ms {
            query.append_pair("retry", &retry_ms.to_string());
        }
        (query.finish(), event.data.clone().into_bytes())
    });
});
