//! The JSON event decoder never panics, and refuses or accepts every input with a reason.
#![no_main]
use fathom_ingest::config::SourceConfig;
use fathom_ingest::decode::Decoder;
use fathom_ingest::record::{Coordinates, Record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let source: SourceConfig =
        serde_yaml_ng::from_str("{ key: card_id, timestamp: ts, max_record_bytes: 4096 }").unwrap();
    let decoder = Decoder::new(&source, vec!["amount".into()]);
    let record = Record {
        source: 0,
        at: Coordinates { partition: Some(0), offset: 1 },
        transport_time_ms: Some(0),
        key: None,
        payload: data.to_vec(),
    };
    if let Err((_, refusal)) = decoder.decode(record, 1_767_225_600_000) {
        assert!(!refusal.message.is_empty());
    }
});
