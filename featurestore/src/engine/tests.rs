//! The engine against a brute-force reference: every accepted event kept in a list, every
//! window recomputed from scratch.

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::definition::{FeatureSetConfig, FeatureSetPlan};

fn plan(yaml: &str) -> FeatureSetPlan {
    let config: FeatureSetConfig = serde_yaml_ng::from_str(yaml).unwrap();
    let mut problems = Vec::new();
    let plan = config.compile("fs", "id", "fs", &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    plan.unwrap()
}

const MIN: i64 = 60_000;

fn sliding_plan() -> FeatureSetPlan {
    plan("entity: e\nsource: s\nfeatures: [amount]\naggregations:\n  - { column: amount, functions: [count, sum, mean, min, max, first, last, variance, stddev, time_since_last, p50, p90, last_3, first_2], windows: [10m, 1h], period: 1m }\n  - { column: merchant, functions: [count, distinct_count, top_2, last_2], windows: [30m], period: 5m }\n  - { column: amount, functions: [sum, count, time_since_last, p99, top_1], windows: [2h], kind: tumbling }\n")
}

/// Accepted events, in arrival order: (ts, amount, merchant).
type Events = Vec<(i64, Option<f64>, Option<String>)>;

fn feed(plan: &FeatureSetPlan, input: &[(i64, Option<f64>, Option<String>)]) -> (EntityState, Events) {
    let mut state = EntityState::new(plan);
    let mut accepted = Vec::new();
    let mut newest = i64::MIN;
    for (ts, amount, merchant) in input {
        let a = amount.map(|x| json!(x));
        let m = merchant.as_ref().map(|s| json!(s));
        let columns: Vec<Option<&Value>> =
            plan.columns.iter().map(|c| if c == "amount" { a.as_ref() } else { m.as_ref() }).collect();
        let outcome = apply(plan, &mut state, *ts, &columns, &[a.as_ref()], None);
        let late = newest != i64::MIN && *ts <= newest - plan.late_after_ms;
        assert_eq!(outcome == Applied::Late, late, "late decision for ts {ts}");
        if !late {
            newest = newest.max(*ts);
            accepted.push((*ts, *amount, merchant.clone()));
        }
    }
    (state, accepted)
}

/// The value of `agg` at `at`, from the raw events.
fn reference(plan: &FeatureSetPlan, agg: &crate::definition::AggFeature, events: &Events, at: i64) -> AggValue {
    let spec = &plan.specs[agg.spec];
    let end = at.div_euclid(spec.period_ms);
    let inside = |ts: i64| {
        let b = ts.div_euclid(spec.period_ms);
        b > end - agg.buckets && b <= end
    };
    let column = &plan.columns[spec.column];
    let picked: Vec<_> = events.iter().filter(|e| inside(e.0)).collect();
    let present: Vec<_> =
        picked.iter().filter(|e| if column == "amount" { e.1.is_some() } else { e.2.is_some() }).collect();
    let nums: Vec<(i64, f64)> =
        if column == "amount" { present.iter().map(|e| (e.0, e.1.unwrap())).collect() } else { vec![] };
    // (time, JSON text) of every present value, by time, arrival order on equal times
    let mut texts: Vec<(i64, String)> = present
        .iter()
        .map(|e| {
            (
                e.0,
                if column == "amount" {
                    json!(e.1.unwrap()).to_string()
                } else {
                    json!(e.2.clone().unwrap()).to_string()
                },
            )
        })
        .collect();
    texts.sort_by_key(|t| t.0);
    let n = nums.len() as f64;
    let mean = nums.iter().map(|x| x.1).sum::<f64>() / n;
    let var = nums.iter().map(|x| (x.1 - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let opt = |x: f64| {
        if nums.is_empty() {
            AggValue::Null
        } else {
            AggValue::Float(x)
        }
    };
    match agg.function {
        Function::Count => AggValue::Int(present.len() as u64),
        Function::Sum => AggValue::Float(nums.iter().map(|x| x.1).sum()),
        Function::Mean => opt(mean),
        Function::Min => opt(nums.iter().map(|x| x.1).fold(f64::INFINITY, f64::min)),
        Function::Max => opt(nums.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max)),
        // earliest time, earliest arrival on ties
        Function::First => opt(nums.iter().fold((i64::MAX, f64::NAN), |acc, x| if x.0 < acc.0 { *x } else { acc }).1),
        // latest time, latest arrival on ties
        Function::Last => opt(nums.iter().fold((i64::MIN, f64::NAN), |acc, x| if x.0 >= acc.0 { *x } else { acc }).1),
        Function::Variance => {
            if nums.len() < 2 {
                AggValue::Null
            } else {
                AggValue::Float(var)
            }
        }
        Function::Stddev => {
            if nums.len() < 2 {
                AggValue::Null
            } else {
                AggValue::Float(var.sqrt())
            }
        }
        // seconds from the newest numeric value in the window to the read time
        Function::TimeSinceLast => opt((at - nums.iter().map(|x| x.0).max().unwrap_or(at)).max(0) as f64 / 1000.0),
        // numpy's quantile(method="lower"): the value at rank ⌊q·(n − 1)⌋
        Function::Percentile(q) => {
            let mut sorted: Vec<f64> = nums.iter().map(|x| x.1).collect();
            sorted.sort_by(f64::total_cmp);
            let rank = (f64::from(q) / 100.0 * (sorted.len() as f64 - 1.0)) as usize;
            sorted.get(rank).map_or(AggValue::Null, |x| AggValue::Float(*x))
        }
        Function::LastK(k) => AggValue::List(texts.iter().rev().take(usize::from(k)).map(|t| t.1.clone()).collect()),
        Function::FirstK(k) => AggValue::List(texts.iter().take(usize::from(k)).map(|t| t.1.clone()).collect()),
        Function::TopK(k) => {
            let mut counts: std::collections::BTreeMap<&str, u64> = Default::default();
            for t in &texts {
                *counts.entry(&t.1).or_default() += 1;
            }
            let mut ranked: Vec<(&str, u64)> = counts.into_iter().collect();
            ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            AggValue::List(ranked.into_iter().take(usize::from(k)).map(|(t, _)| t.to_string()).collect())
        }
        Function::DistinctCount => {
            let mut set: Vec<_> = present.iter().map(|e| e.2.clone().unwrap()).collect();
            set.sort();
            set.dedup();
            AggValue::Int(set.len() as u64)
        }
    }
}

/// Whether the engine's `a` is the reference's `b`: equal, floats to rounding, percentiles
/// within the sketch's documented relative accuracy.
fn close(function: Function, a: &AggValue, b: &AggValue) -> bool {
    match (a, b) {
        (AggValue::Float(x), AggValue::Float(y)) if matches!(function, Function::Percentile(_)) => {
            (x - y).abs() <= QUANTILE_ACCURACY * y.abs() + 1e-9
        }
        (AggValue::Float(x), AggValue::Float(y)) => (x - y).abs() <= 1e-9 * (1.0 + x.abs().max(y.abs())),
        _ => a == b,
    }
}

fn event() -> impl Strategy<Value = (i64, Option<f64>, Option<String>)> {
    (0i64..(3 * 3_600_000), prop::option::weighted(0.9, -1000.0f64..1000.0), prop::option::weighted(0.8, "[a-e]"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Out-of-order streams: every feature at several read times equals the brute-force value.
    #[test]
    fn engine_matches_brute_force_reference(mut input in prop::collection::vec(event(), 1..120), jitter in prop::collection::vec(0i64..(2 * 3_600_000), 4)) {
        // mostly increasing time with some stragglers, like a real partition
        input.sort_by_key(|e| e.0);
        let len = input.len();
        for (i, j) in jitter.iter().enumerate() {
            if let Some(e) = input.get_mut(i * 7 % len) {
                e.0 -= j;
            }
        }
        let plan = sliding_plan();
        let (state, accepted) = feed(&plan, &input);
        let newest = accepted.iter().map(|e| e.0).max().unwrap();
        for at in [newest, newest + 1, newest + 5 * MIN + 17, newest + 59 * MIN, newest + 60 * MIN, newest + 3 * 3_600_000] {
            let got = read(&plan, &state, at);
            for (agg, value) in plan.aggregations.iter().zip(&got) {
                let want = reference(&plan, agg, &accepted, at);
                prop_assert!(close(agg.function, value, &want), "{} at {}: engine {:?}, reference {:?}", agg.name, at, value, want);
            }
        }
    }

    /// The state survives its storage encoding unchanged.
    #[test]
    fn state_round_trips_through_postcard(input in prop::collection::vec(event(), 1..60)) {
        let plan = sliding_plan();
        let (state, _) = feed(&plan, &input);
        let bytes = postcard::to_allocvec(&state).unwrap();
        let back: EntityState = postcard::from_bytes(&bytes).unwrap();
        prop_assert_eq!(read(&plan, &back, 3_600_000 * 3), read(&plan, &state, 3_600_000 * 3));
    }
}

#[test]
fn count_decays_to_zero_one_window_after_the_last_event() {
    let plan = sliding_plan();
    let (state, _) = feed(&plan, &[(10 * MIN + 30_000, Some(5.0), None)]);
    let count_1h = plan.aggregations.iter().position(|a| a.name == "amount_count_1h").unwrap();
    assert_eq!(read(&plan, &state, 10 * MIN + 30_000)[count_1h], AggValue::Int(1));
    assert_eq!(read(&plan, &state, 70 * MIN - 1)[count_1h], AggValue::Int(1));
    assert_eq!(read(&plan, &state, 70 * MIN + 30_000)[count_1h], AggValue::Int(0));
    let mean_1h = plan.aggregations.iter().position(|a| a.name == "amount_mean_1h").unwrap();
    assert_eq!(read(&plan, &state, 71 * MIN)[mean_1h], AggValue::Null);
}

#[test]
fn a_ring_gives_back_the_capacity_of_a_busy_spell() {
    // an hour of one event a minute fills the 1-minute ring (60 buckets), then two hours of one
    // event every ten minutes leave it 6; its memory must follow, not stay at the busy peak
    let plan = sliding_plan();
    let busy = (0..60).map(|m| (m * MIN, Some(1.0), Some("m".to_string())));
    let quiet = (7..19).map(|t| (t * 10 * MIN, Some(1.0), Some("m".to_string())));
    let (state, events) = feed(&plan, &busy.chain(quiet).collect::<Vec<_>>());
    for ring in &state.rings {
        assert!(ring.capacity() <= 2 * ring.len() + 4, "{} buckets, capacity {}", ring.len(), ring.capacity());
    }
    assert_eq!(state.rings[0].len(), 6);
    let at = 180 * MIN;
    for (agg, value) in plan.aggregations.iter().zip(read(&plan, &state, at)) {
        assert!(close(agg.function, &value, &reference(&plan, agg, &events, at)), "{}", agg.name);
    }
}

#[test]
fn tumbling_window_restarts_at_the_epoch_aligned_boundary() {
    let plan = sliding_plan();
    let mut events = vec![(110 * MIN, Some(1.0), None), (119 * MIN, Some(2.0), None)];
    let sum = plan.aggregations.iter().position(|a| a.name == "amount_sum_2h").unwrap();
    assert_eq!(read(&plan, &feed(&plan, &events).0, 119 * MIN)[sum], AggValue::Float(3.0));
    events.push((121 * MIN, Some(4.0), None));
    let (state, _) = feed(&plan, &events);
    assert_eq!(read(&plan, &state, 121 * MIN)[sum], AggValue::Float(4.0));
    assert_eq!(read(&plan, &state, 241 * MIN)[sum], AggValue::Float(0.0));
}

#[test]
fn events_beyond_the_longest_window_are_late() {
    let plan = sliding_plan();
    let mut state = EntityState::new(&plan);
    let v = json!(1.0);
    let cols = vec![Some(&v); plan.columns.len()];
    assert_eq!(plan.late_after_ms, 2 * 3_600_000, "longest window is the 2h tumbling one");
    assert_eq!(apply(&plan, &mut state, 5 * 3_600_000, &cols, &[None], None), Applied::Applied);
    assert_eq!(apply(&plan, &mut state, 3 * 3_600_000, &cols, &[None], None), Applied::Late);
    assert_eq!(apply(&plan, &mut state, 3 * 3_600_000 + 1, &cols, &[None], None), Applied::Applied);
}

#[test]
fn replayed_positions_are_applied_once() {
    let plan = sliding_plan();
    let mut state = EntityState::new(&plan);
    let v = json!(2.0);
    let cols = vec![Some(&v); plan.columns.len()];
    let at = |offset| Some(Position { partition: 3, offset });
    assert_eq!(apply(&plan, &mut state, 1000, &cols, &[None], at(10)), Applied::Applied);
    assert_eq!(apply(&plan, &mut state, 1000, &cols, &[None], at(10)), Applied::Duplicate);
    assert_eq!(apply(&plan, &mut state, 1000, &cols, &[None], at(9)), Applied::Duplicate);
    assert_eq!(
        apply(&plan, &mut state, 1000, &cols, &[None], Some(Position { partition: 4, offset: 1 })),
        Applied::Applied
    );
    let count_10m = plan.aggregations.iter().position(|a| a.name == "amount_count_10m").unwrap();
    assert_eq!(read(&plan, &state, 1000)[count_10m], AggValue::Int(2));
}

#[test]
fn latest_value_keeps_the_newest_event_time() {
    let plan = sliding_plan();
    let (state, _) = feed(&plan, &[(5000, Some(1.0), None), (4000, Some(2.0), None), (5000, Some(3.0), None)]);
    assert_eq!(state.latest[0], Some((5000, "3.0".to_string())));
}

#[test]
fn variance_is_stable_for_large_offsets() {
    let plan = sliding_plan();
    let input: Vec<_> = (0..1000).map(|i| (i * 100, Some(1e9 + (i % 2) as f64), None)).collect();
    let (state, _) = feed(&plan, &input);
    let var = plan.aggregations.iter().position(|a| a.name == "amount_variance_10m").unwrap();
    let AggValue::Float(v) = read(&plan, &state, 99_900)[var] else { panic!("no variance") };
    assert!((v - 0.25025).abs() < 1e-6, "variance {v}");
}

/// distinct_count beyond the sketch's exact range: 10^3 … 10^6 distinct values spread over a
/// day of hourly buckets, half of them seen again in other hours (so the merge across buckets
/// must not count them twice), against the true count and the documented bound: HyperLogLog
/// with 2^14 registers has a standard error of 1.04 / √16384 = 0.81 %; every estimate must be
/// within 4 standard errors, and their root-mean-square error within 1.5.
#[test]
fn distinct_count_error_stays_within_the_documented_bound_from_a_thousand_to_a_million() {
    let plan = plan(
        "entity: e\nsource: s\naggregations:\n  - { column: merchant, functions: [distinct_count], windows: [24h], period: 1h }\n",
    );
    let standard_error = 1.04 / (16_384f64).sqrt();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let t0 = 1_767_225_600_000i64;
    let mut errors = Vec::new();
    for n in [1_000u64, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000] {
        // (hour, value): every value once, half of them again in another hour
        let mut events: Vec<(i64, u64)> = (0..n).map(|v| (next(24) as i64, v)).collect();
        events.extend((0..n / 2).map(|v| (next(24) as i64, v * 2)));
        events.sort_unstable();
        let mut entity = EntityState::new(&plan);
        for (hour, v) in &events {
            let value = Value::String(format!("merchant-{v}"));
            apply(&plan, &mut entity, t0 + hour * 3_600_000 + 1, &[Some(&value)], &[], None);
        }
        let AggValue::Int(estimate) = read(&plan, &entity, t0 + 24 * 3_600_000 - 1)[0] else { panic!("an integer") };
        let error = (estimate as f64 - n as f64) / n as f64;
        assert!(error.abs() <= 4.0 * standard_error, "{n} distinct values: estimate {estimate}, error {error:.4}");
        errors.push(error);
    }
    let rms = (errors.iter().map(|e| e * e).sum::<f64>() / errors.len() as f64).sqrt();
    assert!(rms <= 1.5 * standard_error, "root-mean-square error {rms:.4} over {errors:?}");
}
