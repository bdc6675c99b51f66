//! Sketch-based aggregations against the libraries users check them with: percentiles against
//! numpy's exact quantiles within the documented relative accuracy, top_k against pandas'
//! `value_counts`, distinct_count against Apache DataSketches' own library — over many buckets,
//! so the sketches' merges are exercised too.

mod common;

use common::{python_json, Xorshift};
use fathom_featurestore::definition::{FeatureSetConfig, FeatureSetPlan};
use fathom_featurestore::engine::{
    apply, read, AggValue, Distinct, EntityState, DISTINCT_LG_K, FREQUENT_EXACT, QUANTILE_ACCURACY,
};
use serde_json::{json, Value};

const HOUR: i64 = 3_600_000;
const T0: i64 = 1_767_225_600_000;

fn plan(functions: &str) -> FeatureSetPlan {
    let yaml =
        format!("entity: e\nsource: s\naggregations:\n  - {{ column: x, functions: [{functions}], windows: [24h], period: 1h }}\n");
    let config: FeatureSetConfig = serde_yaml_ng::from_str(&yaml).unwrap();
    let mut problems = Vec::new();
    let plan = config.compile("fs", "id", "fs", &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    plan.unwrap()
}

/// Feeds `values` spread over the 24 hourly buckets of one day and reads the day's window.
fn day(plan: &FeatureSetPlan, values: &[Value], rng: &mut Xorshift) -> Vec<AggValue> {
    let mut state = EntityState::new(plan);
    for v in values {
        let ts = T0 + rng.below(24 * HOUR as u64) as i64;
        apply(plan, &mut state, ts, &[Some(v)], &[], None);
    }
    read(plan, &state, T0 + 24 * HOUR - 1)
}

/// Samples from a distribution named as in the test's table.
fn sample(kind: &str, n: usize, rng: &mut Xorshift) -> Vec<f64> {
    let normal =
        |rng: &mut Xorshift| (-2.0 * rng.uniform().ln()).sqrt() * (2.0 * std::f64::consts::PI * rng.uniform()).cos();
    (0..n)
        .map(|_| match kind {
            "lognormal" => (3.0 + 1.5 * normal(rng)).exp(),
            "normal" => 50.0 * normal(rng) - 10.0,
            "uniform" => rng.uniform() * 1000.0,
            // card amounts: many zeros (voids), small integers, rare huge refunds
            "amounts" => match rng.below(10) {
                0 => 0.0,
                1 => -(rng.below(50_000) as f64),
                _ => (rng.below(20_000) as f64) / 100.0,
            },
            "pareto" => 1.0 / rng.uniform().powf(1.0 / 1.2),
            other => panic!("no distribution {other}"),
        })
        .collect()
}

#[test]
fn percentiles_are_within_the_documented_relative_accuracy_of_numpy() {
    let qs = [1u8, 5, 25, 50, 75, 90, 95, 99];
    let functions: Vec<String> = qs.iter().map(|q| format!("p{q}")).collect();
    let plan = plan(&functions.join(", "));
    let mut rng = Xorshift(0x5eed_1234_abcd);
    for kind in ["lognormal", "normal", "uniform", "amounts", "pareto"] {
        for n in [1usize, 7, 100, 10_000, 200_000] {
            let xs = sample(kind, n, &mut rng);
            let values: Vec<Value> = xs.iter().map(|x| json!(x)).collect();
            let got = day(&plan, &values, &mut rng);
            let exact = python_json(
                "import json, sys, numpy as np\n\
                 d = json.load(sys.stdin)\n\
                 x = np.array(d['x'], dtype=float)\n\
                 print(json.dumps([float(np.quantile(x, q / 100, method='lower')) for q in d['q']]))",
                &[],
                &json!({"x": xs, "q": qs}).to_string(),
            );
            for ((q, got), want) in qs.iter().zip(&got).zip(exact.as_array().unwrap()) {
                let want = want.as_f64().unwrap();
                let AggValue::Float(got) = got else { panic!("{kind} n={n} p{q}: {got:?}") };
                assert!(
                    (got - want).abs() <= QUANTILE_ACCURACY * want.abs() + 1e-9,
                    "{kind} n={n} p{q}: sketch {got}, numpy {want} (relative error {:.4})",
                    (got - want).abs() / want.abs()
                );
            }
        }
    }
}

#[test]
fn percentiles_of_an_empty_window_are_null_and_of_non_numbers_ignored() {
    let plan = plan("p50, count");
    let mut rng = Xorshift(7);
    assert_eq!(day(&plan, &[], &mut rng), vec![AggValue::Null, AggValue::Int(0)]);
    let got = day(&plan, &[json!("abc"), json!(true), json!(4.0)], &mut rng);
    let AggValue::Float(p50) = got[0] else { panic!("p50 {:?}", got[0]) };
    assert!((p50 - 4.0).abs() <= QUANTILE_ACCURACY * 4.0, "p50 {p50}");
    assert_eq!(got[1], AggValue::Int(3));
}

#[test]
fn top_k_matches_pandas_value_counts_exactly_and_beyond_the_exact_range() {
    let plan = plan("top_5, top_1, distinct_count");
    let mut rng = Xorshift(0xfeed_beef);
    // few categories: exact; Zipf over many more categories than the sketch counts exactly:
    // the heavy hitters must still come out in pandas' order
    for (categories, n, skew) in [(6u64, 500usize, 0.0), (40, 5_000, 1.0), (FREQUENT_EXACT as u64 * 20, 100_000, 1.3)] {
        let weights: Vec<f64> = (1..=categories).map(|i| (i as f64).powf(-skew)).collect();
        let total: f64 = weights.iter().sum();
        let pick = |rng: &mut Xorshift| {
            let mut u = rng.uniform() * total;
            for (i, w) in weights.iter().enumerate() {
                if u < *w {
                    return i;
                }
                u -= w;
            }
            weights.len() - 1
        };
        let names: Vec<String> = (0..n).map(|_| format!("mcc-{:04}", pick(&mut rng))).collect();
        let values: Vec<Value> = names.iter().map(|s| json!(s)).collect();
        let got = day(&plan, &values, &mut rng);
        let want = python_json(
            "import json, sys, pandas as pd\n\
             s = pd.Series(json.load(sys.stdin))\n\
             c = s.value_counts().reset_index()\n\
             c.columns = ['v', 'n']\n\
             c = c.sort_values(['n', 'v'], ascending=[False, True])\n\
             print(json.dumps(list(c['v'][:5])))",
            &[],
            &json!(names).to_string(),
        );
        let want: Vec<Value> = want.as_array().unwrap().clone();
        assert_eq!(got[0].to_json(), Value::Array(want.clone()), "{categories} categories, {n} values: top_5");
        assert_eq!(got[1].to_json(), Value::Array(want[..1].to_vec()), "{categories} categories: top_1");
    }
}

/// distinct_count against Apache DataSketches' Python library (its C++ HLL): a day's window,
/// merged from 24 hourly buckets, reports the estimate of DataSketches' union of HLL sketches
/// (lg_k 14, HLL_8) of the same strings — ASCII, accented, CJK and emoji, so the hash must be of
/// the UTF-8 bytes as DataSketches hashes them; a merged sketch's estimate is the composite
/// estimator, a function of the registers alone — and a sketch as Fathom stores it reads there
/// as the sketch DataSketches builds from the same strings. Small sets count exactly.
#[test]
fn distinct_count_matches_apache_datasketches_and_its_stored_sketches_read_there() {
    let plan = plan("distinct_count");
    let mut rng = Xorshift(0x5eed_d15c);
    for n in [1u64, 3, 40, 700, 5_000, 60_000] {
        let names: Vec<String> = (0..2 * n)
            .map(|_| {
                let k = rng.below(n);
                match k % 3 {
                    0 => format!("merchant-{k}"),
                    1 => format!("café-{k}"),
                    _ => format!("商户-{k}-🛒"),
                }
            })
            .collect();
        let values: Vec<Value> = names.iter().map(|s| json!(s)).collect();
        let AggValue::Int(got) = day(&plan, &values, &mut rng)[0] else { panic!("an integer") };
        let mut stored = Distinct::new();
        names.iter().for_each(|s| stored.insert(s));
        let hex: String = stored.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        let want = python_json(
            "import json, sys, datasketches as ds\n\
             names, lg_k, ours = json.load(sys.stdin)\n\
             def sketch(values): s = ds.hll_sketch(lg_k, ds.tgt_hll_type.HLL_8); [s.update(v) for v in values]; return s\n\
             u = ds.hll_union(lg_k)\n\
             u.update(sketch(names[::2]))\n\
             u.update(sketch(names[1::2]))\n\
             o = ds.hll_sketch.deserialize(bytes.fromhex(ours))\n\
             print(json.dumps([u.get_estimate(), o.get_estimate(), sketch(names).get_estimate(), len(set(names))]))",
            &[],
            &json!([names, DISTINCT_LG_K, hex]).to_string(),
        );
        let (reference, read_back, theirs, exact) = (
            want[0].as_f64().unwrap(),
            want[1].as_f64().unwrap(),
            want[2].as_f64().unwrap(),
            want[3].as_u64().unwrap(),
        );
        assert!(
            (got as f64 - reference).abs() <= 0.5 + 1e-9 * reference,
            "{n}: Fathom {got}, DataSketches {reference}"
        );
        assert!((read_back - theirs).abs() <= 1e-9 * theirs, "{n}: our sketch reads as {read_back}, theirs {theirs}");
        assert_eq!(stored.estimate(), got, "{n}: one sketch of every value and the merged window agree");
        if exact <= 1_000 {
            assert_eq!(got, exact, "{n}: a small set counts exactly");
        }
    }
}
