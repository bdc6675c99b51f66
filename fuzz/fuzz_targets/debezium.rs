//! The Debezium envelope decoder never panics, with or without a record key.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = vec!["id".to_string()];
    let split = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let (key, value) = data.split_at(split);
    let _ = fathom_ingest::debezium::decode(Some(key), value, &keys, fathom_ingest::debezium::UNAVAILABLE_VALUE);
    let _ = fathom_ingest::debezium::decode(None, data, &keys, fathom_ingest::debezium::UNAVAILABLE_VALUE);
});
