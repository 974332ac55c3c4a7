//! `application/json` publish bodies. Input: the query string, LF, the body.

#![no_main]

use herald::bench_support::PublishFormat;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    herald_fuzz::check_publish(PublishFormat::Json, data, |event| {
        let mut object = serde_json::Map::new();
        object.insert("topic".into(), event.topics.clone().into());
        if let Some(name) = &event.name {
            object.insert("event".into(), name.clone().into());
        }
        if let Some(retry_ms) = event.retry_ms {
            object.insert("retry".into(), retry_ms.into());
        }
        object.insert("data".into(), event.data.clone().into());
        (
            String::new(),
            serde_json::Value::Object(object).to_string().into_bytes(),
        )
    });
});
