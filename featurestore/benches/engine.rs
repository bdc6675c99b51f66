//! Criterion benchmark of the aggregation kernel: `apply` of one event into an entity with
//! 5 functions × 3 windows, and `read` of all 15 features. `fathom bench engine` measures the
//! same kernel over a 1M-event, 100k-key stream.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fathom_featurestore::definition::FeatureSetConfig;
use fathom_featurestore::engine::{self, EntityState};
use serde_json::Value;

fn kernel(c: &mut Criterion) {
    let config: FeatureSetConfig = serde_yaml_ng::from_str(
        "entity: card\nsource: tx\naggregations:\n  - { column: amount, functions: [count, sum, mean, max, stddev], windows: [10m, 1h, 24h], period: 1m }\n",
    )
    .expect("config");
    let plan = config.compile("bench", "card", "bench", &mut Vec::new()).expect("plan");
    let amounts: Vec<Value> = (0..1024).map(|i| Value::from(i as f64 * 0.37)).collect();
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));
    group.bench_function("apply_in_order", |b| {
        let mut state = EntityState::new(&plan);
        let mut ts = 0i64;
        let mut i = 0;
        b.iter(|| {
            ts += 7_000;
            i = (i + 1) & 1023;
            engine::apply(&plan, &mut state, ts, &[Some(&amounts[i])], &[], None)
        });
    });
    let mut state = EntityState::new(&plan);
    for i in 0..2_000i64 {
        engine::apply(&plan, &mut state, i * 43_000, &[Some(&amounts[(i & 1023) as usize])], &[], None);
    }
    group.bench_function("read_15_features_of_a_busy_entity", |b| {
        b.iter(|| engine::read(&plan, &state, 2_000 * 43_000));
    });
    group.finish();
}

criterion_group!(benches, kernel);
criterion_main!(benches);
