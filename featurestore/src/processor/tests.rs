//! Crash and replay at the processor level: whatever prefix was flushed before a "crash" and
//! wherever the replay restarts (at or before the committed position), the final stored states
//! equal one uninterrupted pass.

use std::sync::Arc;

use fathom_ingest::event::Event;
use fathom_ingest::record::Coordinates;
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::definition::FeatureSetConfig;
use crate::online::EmbeddedStore;

fn plan() -> FeatureSetPlan {
    let config: FeatureSetConfig = serde_yaml_ng::from_str(
        "entity: e\nsource: s\nfeatures: [tag]\naggregations:\n  - { column: amount, functions: [count, sum, last, stddev], windows: [10m, 1h], period: 1m }\n  - { column: tag, functions: [distinct_count], windows: [1h], period: 5m }\n",
    )
    .unwrap();
    config.compile("fs", "id", "fs", &mut Vec::new()).unwrap()
}

/// Events of two partitions, interleaved as a consumer would see them.
fn events(raw: &[(u8, u8, i64, u8)]) -> Vec<Event> {
    let mut next = [0i64; 2];
    raw.iter()
        .map(|&(partition, key, ts, tag)| {
            let p = usize::from(partition % 2);
            let offset = next[p];
            next[p] += 1;
            let fields = json!({"id": format!("k{key}"), "amount": f64::from(tag) * 1.5, "tag": format!("t{tag}")});
            Event {
                source: 0,
                key: format!("k{}", key % 6),
                time_ms: ts,
                raw: fields.to_string().into_bytes(),
                fields: fields.as_object().unwrap().clone(),
                at: Coordinates { partition: Some(p as i32), offset },
            }
        })
        .collect()
}

fn processor(store: &Arc<EmbeddedStore>) -> Processor {
    Processor::new("t", vec![plan()], &[0], &["id".to_string()], OnlineStore::Embedded(store.clone()), 1_000)
}

async fn run(processor: &mut Processor, events: &[Event], batch: usize) {
    for chunk in events.chunks(batch) {
        processor.process(chunk).await.unwrap();
        processor.flush(&[]).await.unwrap();
    }
}

/// What a caller can observe of every entity: feature values at several read times, newest event
/// time and applied offsets. (Not the raw bytes: the distinct-count sketch's encoding is not
/// canonical.)
async fn stored(store: &Arc<EmbeddedStore>) -> Vec<Option<(Vec<crate::lookup::FeatureValue>, i64, Vec<(i32, i64)>)>> {
    let plan = plan();
    let keys: Vec<String> = (0..6).map(|k| online::entity_key("t", "fs", &format!("k{k}"))).collect();
    let raw = OnlineStore::Embedded(store.clone()).load(&keys).await.unwrap();
    raw.into_iter()
        .map(|bytes| {
            let state = online::decode(&plan, &bytes?).expect("decodes");
            let mut values = Vec::new();
            for at in [3_600_000, 7_200_000, 7_800_000] {
                values.extend(crate::lookup::feature_values(&plan, Some(&state), at));
            }
            Some((values, state.newest_ms, state.offsets.clone()))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn replay_after_a_crash_equals_one_uninterrupted_pass(
        raw in prop::collection::vec((0u8..2, 0u8..6, 0i64..7_200_000, 0u8..9), 1..150),
        batch in 1usize..40,
        crash_at in 0usize..150,
        rewind in 0usize..150,
    ) {
        let events = events(&raw);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (steady, crashed) = runtime.block_on(async {
            let steady = Arc::new(EmbeddedStore::new());
            run(&mut processor(&steady), &events, batch).await;

            let crashed = Arc::new(EmbeddedStore::new());
            let crash_at = crash_at.min(events.len());
            run(&mut processor(&crashed), &events[..crash_at], batch).await;
            // a new process: empty cache, replay from any point at or before what was flushed
            let from = crash_at.saturating_sub(rewind);
            run(&mut processor(&crashed), &events[from..], batch).await;
            (stored(&steady).await, stored(&crashed).await)
        });
        prop_assert_eq!(steady, crashed);
    }
}
