use super::*;
use crate::alerts::Comparison;
use crate::profile::{CategoricalProfile, NumericProfile};

const MIN: i64 = 60_000;

fn profile() -> Profile {
    let amount = NumericProfile::build((0..200).map(|i| f64::from(i % 20)).collect(), 0);
    let country =
        CategoricalProfile { count: 100, missing: 0, top: vec![("DE".into(), 60), ("FR".into(), 40)], other: 0 };
    let prediction =
        CategoricalProfile { count: 100, missing: 0, top: vec![("0".into(), 90), ("1".into(), 10)], other: 0 };
    Profile {
        format: crate::profile::FORMAT.into(),
        model: "fraud".into(),
        created: String::new(),
        source: String::new(),
        rows: 200,
        features: [
            ("tx.amount".to_string(), FeatureProfile::Numeric(amount)),
            ("tx.country".to_string(), FeatureProfile::Categorical(country)),
            ("prediction".to_string(), FeatureProfile::Categorical(prediction)),
        ]
        .into(),
    }
}

fn settings() -> Settings {
    Settings {
        model: "fraud".into(),
        window_ms: 10 * MIN,
        sliding_ms: Some(30 * MIN),
        lateness_ms: MIN,
        max_delay_ms: 30 * MIN,
        thresholds: (0.5, 0.7),
        feature_thresholds: BTreeMap::new(),
        rules: vec![Rule {
            name: None,
            metric: "drift_score".into(),
            comparison: Comparison::AtLeast,
            threshold: 0.7,
            consecutive: 2,
            cooldown_ms: 0,
        }],
        retrain: Some(Rule {
            name: None,
            metric: "accuracy".into(),
            comparison: Comparison::Below,
            threshold: 0.5,
            consecutive: 1,
            cooldown_ms: 0,
        }),
        positive_class: Default::default(),
    }
}

fn record(id: usize, ts_ms: i64, amount: f64, country: &str, class: &str) -> Prediction {
    Prediction {
        request_id: id.to_string(),
        model: "fraud".into(),
        model_version: "1".into(),
        ts_ms,
        features: serde_json::json!({"tx__amount": amount, "country": country}).as_object().unwrap().clone(),
        outcome: Outcome::Class { class: class.into(), probabilities: None },
        latency_ms: Some(id as f64),
    }
}

fn field<'a>(p: &'a Point, name: &str) -> &'a Field {
    &p.fields.iter().find(|(k, _)| k == name).unwrap_or_else(|| panic!("{name} in {p:?}")).1
}

fn float(p: &Point, name: &str) -> f64 {
    match field(p, name) {
        Field::Float(x) => *x,
        Field::Int(n) => *n as f64,
        other => panic!("{other:?}"),
    }
}

fn find<'a>(points: &'a [Point], measurement: &str, tags: &[(&str, &str)]) -> Vec<&'a Point> {
    points
        .iter()
        .filter(|p| {
            p.measurement == measurement && tags.iter().all(|(k, v)| p.tags.iter().any(|(tk, tv)| tk == k && tv == v))
        })
        .collect()
}

/// A classification prediction as the join remembers it.
fn predicted(ts_ms: i64, class: &str) -> Predicted {
    Predicted { ts_ms, outcome: Outcome::Class { class: class.into(), probabilities: None } }
}

/// A class label as the join remembers it.
fn label(class: &str) -> Labelled {
    Labelled { ts_ms: 0, label: format!("\"{class}\"") }
}

/// Four predictions of class "1" in the first window; two labelled, one right and one wrong.
fn four_predictions_two_labelled(m: &mut ModelMonitor) {
    for i in 0..4 {
        m.prediction(&record(i, i as i64, 1.0, "DE", "1"), 0);
    }
    m.pair(&predicted(0, "1"), &label("1"));
    m.pair(&predicted(1, "1"), &label("0"));
}

#[test]
fn windows_close_on_event_time_and_bin_on_the_reference_edges() {
    let mut m = ModelMonitor::new(settings(), &profile(), ModelState::default());
    // window [0, 10m): amounts 0..9 twice, countries DE/FR; window [10m, 20m): all amounts 25
    for i in 0..20 {
        m.prediction(&record(i, i as i64 * 1000, (i % 10) as f64, if i % 2 == 0 { "DE" } else { "FR" }, "0"), 0);
    }
    for i in 20..30 {
        m.prediction(&record(i, 10 * MIN + i as i64 * 1000, 25.0, "ES", "1"), 0);
    }
    let (points, _) = m.advance(false);
    assert!(find(&points, "fathom_feature_drift", &[]).is_empty(), "newest 10m20s − 1m lateness closes nothing");
    m.prediction(&record(30, 21 * MIN, 1.0, "DE", "0"), 0);
    let (points, _) = m.advance(false);
    let amount = find(&points, "fathom_feature_drift", &[("feature", "tx.amount"), ("window", "tumbling")]);
    assert_eq!(amount.len(), 2, "windows 0 and 10m closed: {points:#?}");
    let NumericProfile { counts, edges, .. } = match &profile().features["tx.amount"] {
        FeatureProfile::Numeric(n) => n.clone(),
        _ => unreachable!(),
    };
    let reference = NumericProfile::build((0..200).map(|i| f64::from(i % 20)).collect(), 0);
    let mut live = vec![0u64; counts.len()];
    for i in 0..20 {
        live[reference.bin((i % 10) as f64)] += 1;
    }
    let expected = drift::numeric(&counts, &live, &edges);
    assert_eq!(float(amount[0], "tvd"), expected.tvd);
    assert_eq!(float(amount[0], "ks_p"), expected.ks_p.unwrap());
    assert_eq!(amount[0].time_ns, ns(10 * MIN), "points stand at the window's end");
    // the second window's amounts are all above the reference range: the upper outer bin
    let mut outer = vec![0u64; counts.len()];
    outer[counts.len() - 1] = 10;
    assert_eq!(float(amount[1], "tvd"), drift::numeric(&counts, &outer, &edges).tvd);
    let country = find(&points, "fathom_feature_drift", &[("feature", "tx.country"), ("window", "tumbling")]);
    assert_eq!(float(country[1], "tvd"), 1.0, "ES is \"other\", which the reference never saw");
    let prediction = find(&points, "fathom_feature_drift", &[("feature", "prediction")]);
    assert_eq!(prediction.len(), 4, "prediction drift, tumbling and sliding, both windows");
    let sliding = find(&points, "fathom_feature_drift", &[("feature", "tx.amount"), ("window", "sliding")]);
    let mut both = live.clone();
    both[counts.len() - 1] += 10;
    assert_eq!(float(sliding[1], "tvd"), drift::numeric(&counts, &both, &edges).tvd, "the sliding window sums");
    let serving = find(&points, "fathom_serving", &[]);
    assert_eq!(float(serving[0], "requests"), 20.0);
    assert!((float(serving[0], "latency_p50") - 9.0).abs() < 0.01, "latencies 0..19 ms: {serving:?}");
    let model = find(&points, "fathom_model_drift", &[("window", "tumbling")]);
    assert_eq!(model.len(), 2);
    assert!(matches!(field(model[1], "status"), Field::Str(s) if s == "drift_detected"));
    // a prediction for a closed window is late: counted, not binned
    m.prediction(&record(31, 5 * MIN, 1.0, "DE", "0"), 0);
    assert_eq!(m.state.counters.late_predictions, 1);
    assert_eq!(m.state.windows[&0].predictions, 21);
    assert_eq!(m.state.windows[&0].bins[0].iter().sum::<u64>(), 20);
}

#[test]
fn performance_goes_to_the_prediction_window_and_expires_after_max_delay() {
    let mut m = ModelMonitor::new(settings(), &profile(), ModelState::default());
    four_predictions_two_labelled(&mut m);
    let (points, _) = m.advance(false);
    let perf = find(&points, "fathom_model_performance", &[]);
    assert_eq!(perf.len(), 1, "written as soon as labels arrive");
    assert_eq!(float(perf[0], "accuracy"), 0.5);
    assert_eq!(float(perf[0], "label_coverage"), 0.5);
    assert_eq!(field(perf[0], "final"), &Field::Bool(false));
    let (again, _) = m.advance(false);
    assert!(find(&again, "fathom_model_performance", &[]).is_empty(), "unchanged: not written again");
    // time passes: 40 minutes later the first window is final; two predictions expired
    m.prediction(&record(9, 41 * MIN, 1.0, "DE", "1"), 0);
    let (points, events) = m.advance(false);
    let perf = find(&points, "fathom_model_performance", &[]);
    assert_eq!(perf.len(), 1);
    assert_eq!(field(perf[0], "final"), &Field::Bool(true));
    assert_eq!(float(perf[0], "expired"), 2.0);
    assert_eq!(m.state.counters.expired, 2);
    assert!(events.is_empty(), "accuracy 0.5 is not below 0.5");
    assert!(m.expired(3));
    m.pair(&predicted(3, "1"), &label("1"));
    assert_eq!(m.state.counters.labels_after_expiry, 1, "a label after expiry is counted, not joined");
    let (points, _) = m.advance(false);
    assert!(find(&points, "fathom_model_performance", &[]).is_empty());
}

#[test]
fn a_final_window_frees_its_labelled_pairs_but_stays_for_drift() {
    let settings = Settings { max_delay_ms: 5 * MIN, ..settings() };
    let mut m = ModelMonitor::new(settings, &profile(), ModelState::default());
    four_predictions_two_labelled(&mut m);
    m.advance(false);
    assert_eq!(m.state.windows[&0].classified.len(), 2, "pairs are kept while labels may still come");
    // 16 minutes: the first window is final (ended 10 min, + 5 min max delay) but within the
    // 30-minute sliding drift window
    m.prediction(&record(9, 16 * MIN, 1.0, "DE", "1"), 0);
    let (points, _) = m.advance(false);
    let perf = find(&points, "fathom_model_performance", &[]);
    assert_eq!(perf.len(), 1);
    assert_eq!(field(perf[0], "final"), &Field::Bool(true));
    assert_eq!(float(perf[0], "accuracy"), 0.5);
    let first = m.state.windows.get(&0).expect("kept for the sliding drift window");
    assert_eq!(first.predictions, 4);
    assert!(first.classified.is_empty() && first.regressed.is_empty(), "final: its pairs are freed");
}

#[test]
fn rules_fire_once_and_a_restored_state_continues_the_same() {
    let run = |split: Option<usize>| {
        let mut state = ModelState::default();
        let mut events = Vec::new();
        let mut m = ModelMonitor::new(settings(), &profile(), state.clone());
        for w in 0..8i64 {
            // windows 2..=5 all "ES" with huge amounts: drifted
            let (amount, country) = if (2..=5).contains(&w) { (1e6, "ES") } else { (3.0, "DE") };
            for i in 0..10 {
                m.prediction(&record(i, w * 10 * MIN + i as i64, amount, country, "0"), 0);
            }
            let (_, e) = m.advance(false);
            events.extend(e);
            if split == Some(w as usize) {
                state = serde_json::from_str(&serde_json::to_string(&m.state).unwrap()).unwrap();
                m = ModelMonitor::new(settings(), &profile(), state.clone());
            }
        }
        let (_, e) = m.advance(true);
        events.extend(e);
        events.into_iter().map(|e| (e.rule, e.transition, e.end_ms / MIN)).collect::<Vec<_>>()
    };
    let uninterrupted = run(None);
    assert_eq!(uninterrupted, vec![(Some(0), Transition::Fired, 40), (Some(0), Transition::Resolved, 70)]);
    for split in 0..8 {
        assert_eq!(run(Some(split)), uninterrupted, "restored after window {split}");
    }
}

#[test]
fn a_feature_without_values_in_a_window_says_no_data_and_stays_out_of_the_score() {
    let mut m = ModelMonitor::new(settings(), &profile(), ModelState::default());
    // window [0, 10m): amounts but never a country (null); a later prediction closes it
    for i in 0..20 {
        m.prediction(&record_without_country(i, i as i64 * 1000, (i % 10) as f64), 0);
    }
    m.prediction(&record(20, 12 * MIN, 1.0, "DE", "0"), 0);
    let (points, _) = m.advance(false);
    let tags = [("feature", "tx.country"), ("window", "tumbling")];
    let country = find(&points, "fathom_feature_drift", &tags);
    assert_eq!(country.len(), 1, "{points:#?}");
    assert!(matches!(field(country[0], "status"), Field::Str(s) if s == "no_data"), "{country:?}");
    assert_eq!(float(country[0], "count"), 0.0);
    assert!(!country[0].fields.iter().any(|(k, _)| k == "tvd" || k == "score"), "no statistics: {country:?}");
    let amount = find(&points, "fathom_feature_drift", &[("feature", "tx.amount"), ("window", "tumbling")]);
    let model = find(&points, "fathom_model_drift", &[("window", "tumbling")]);
    assert_eq!(float(model[0], "score"), float(amount[0], "score"), "the model's score is the amount's alone");
}

/// A prediction whose `country` feature is null.
fn record_without_country(id: usize, ts_ms: i64, amount: f64) -> Prediction {
    let mut r = record(id, ts_ms, amount, "DE", "0");
    r.features.insert("country".into(), serde_json::Value::Null);
    r
}

#[test]
fn a_timestamp_feature_bins_in_seconds_since_the_epoch_as_its_profile_does() {
    // `fathom profile` reads a timestamp column as seconds since the epoch: a live RFC 3339
    // value lands in the bin of the same instant given as a number
    let seconds: Vec<f64> = (0..100).map(|i| 1_795_168_800.0 + f64::from(i) * 60.0).collect();
    let binner = Binner::Numeric(NumericProfile::build(seconds, 0));
    for (text, number) in [("2026-11-20T10:00:00Z", 1_795_168_800.0), ("2026-11-20T11:10:30+01:00", 1_795_169_430.0)] {
        let at_text = binner.bin(Some(&serde_json::json!(text)));
        assert_eq!(at_text, binner.bin(Some(&serde_json::json!(number))), "{text}");
        assert!(at_text.is_some());
    }
    assert_eq!(binner.bin(Some(&serde_json::json!("not a time"))), None, "missing, not a bin");
}
