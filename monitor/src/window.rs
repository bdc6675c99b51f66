//! One model's monitoring windows: predictions binned on the reference profile's edges per
//! tumbling window (and summed into a sliding window), labelled pairs attributed to their
//! prediction's window, and the points and rule transitions a closing window produces.
//!
//! Time is event time. A tumbling window `[start, start + window)` closes for drift once the
//! newest prediction time passes its end by `lateness` (or when the stream is idle); predictions
//! for a closed window count as late and are still joined. A label joins its prediction when its
//! own time is at most `max_delay` after the prediction's. A window's performance is written
//! whenever labels arrived (the point at the window's end overwrites itself) and becomes final
//! once both streams' clocks (the slowest partition's newest time, predictions and labels) have
//! passed its end by `max_delay`: predictions still without a label then count as expired, and a
//! label for them counts as after expiry.
//!
//! Everything here is plain data ([`ModelState`]) stored with the monitor's checkpoint.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::alerts::{Rule, RuleState, Transition};
use crate::drift::{self, Drift, Status};
use crate::influx::{Field, Point};
use crate::join::{Labelled, Predicted};
use crate::performance::{self, Classified};
use crate::profile::{FeatureProfile, Profile};
use crate::records::{class_name, Outcome, Prediction};

/// A model's monitoring settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Model name.
    pub model: String,
    /// Tumbling window, ms.
    pub window_ms: i64,
    /// Sliding window (a multiple of `window_ms`), ms; `None` for none.
    pub sliding_ms: Option<i64>,
    /// How long after a window's end its predictions may still arrive, ms.
    pub lateness_ms: i64,
    /// How long a prediction waits for its label, ms.
    pub max_delay_ms: i64,
    /// Model status thresholds: possible, detected.
    pub thresholds: (f64, f64),
    /// Per-feature thresholds overriding the model's for the feature's own status.
    pub feature_thresholds: BTreeMap<String, (f64, f64)>,
    /// Alert rules (evaluated on tumbling windows).
    pub rules: Vec<Rule>,
    /// The retraining rule.
    pub retrain: Option<Rule>,
    /// The class whose precision, recall and F1 a binary model reports.
    pub positive_class: performance::PositiveClass,
}

/// How a feature's values are binned.
#[derive(Debug, Clone)]
enum Binner {
    Numeric(crate::profile::NumericProfile),
    /// Category → bin; the last bin is "other".
    Categorical(HashMap<String, usize>, Vec<u64>),
}

impl Binner {
    fn of(profile: &FeatureProfile) -> Binner {
        match profile {
            FeatureProfile::Numeric(n) => Binner::Numeric(n.clone()),
            FeatureProfile::Categorical(c) => {
                let index = c.top.iter().enumerate().map(|(i, (v, _))| (v.clone(), i)).collect();
                let mut counts: Vec<u64> = c.top.iter().map(|(_, n)| *n).collect();
                counts.push(c.other);
                Binner::Categorical(index, counts)
            }
        }
    }

    fn bins(&self) -> usize {
        match self {
            Binner::Numeric(n) => n.counts.len(),
            Binner::Categorical(_, counts) => counts.len(),
        }
    }

    /// The bin of a value; `None` when missing (null, absent, not a number where one is due).
    fn bin(&self, value: Option<&serde_json::Value>) -> Option<usize> {
        let value = value?;
        match self {
            Binner::Numeric(n) => {
                // an RFC 3339 time counts in seconds since the epoch, as `fathom profile` reads
                // date and timestamp columns
                let x = match value {
                    serde_json::Value::Number(x) => x.as_f64(),
                    serde_json::Value::String(s) => s.parse::<f64>().ok().or_else(|| {
                        chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_micros() as f64 / 1e6)
                    }),
                    serde_json::Value::Bool(b) => Some(f64::from(u8::from(*b))),
                    _ => None,
                }?;
                x.is_finite().then(|| n.bin(x))
            }
            Binner::Categorical(index, counts) => {
                let name = class_name(value)?;
                Some(index.get(&name).copied().unwrap_or(counts.len() - 1))
            }
        }
    }

    fn drift(&self, live: &[u64]) -> Drift {
        match self {
            Binner::Numeric(n) => drift::numeric(&n.counts, live, &n.edges),
            Binner::Categorical(_, reference) => drift::categorical(reference, live),
        }
    }
}

/// Latencies of a window, ms, in a histogram with three significant digits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latencies {
    /// (value in µs, count) pairs as recorded.
    recorded: Vec<(u64, u64)>,
}

impl Latencies {
    fn histogram(&self) -> hdrhistogram::Histogram<u64> {
        let mut h = hdrhistogram::Histogram::new(3).expect("3 significant digits is valid");
        for (v, n) in &self.recorded {
            let _ = h.record_n(*v, *n);
        }
        h
    }

    fn add(&mut self, more: &[f64]) {
        if more.is_empty() {
            return;
        }
        let mut h = self.histogram();
        for ms in more {
            let _ = h.record((ms * 1000.0).round().max(0.0) as u64);
        }
        self.recorded = h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect();
    }
}

/// One tumbling window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Predictions in the window (late ones included).
    pub predictions: u64,
    /// Predictions that arrived after the window closed for drift.
    pub late: u64,
    /// Per profiled feature (profile order), counts per reference bin.
    pub bins: Vec<Vec<u64>>,
    /// Per profiled feature, values missing.
    pub missing: Vec<u64>,
    /// Predicted classes (classification) with their counts.
    pub classes: BTreeMap<String, u64>,
    /// Predicted values (regression): count, sum, sum of squares, min, max.
    pub values: (u64, f64, f64, f64, f64),
    /// Serving latencies.
    pub latencies: Latencies,
    /// Latencies not yet folded into the histogram (folded every 4096 and at the close).
    pub fresh_latencies: Vec<f64>,
    /// Labelled classification predictions.
    pub classified: Vec<Classified>,
    /// Labelled regression predictions (predicted, true).
    pub regressed: Vec<(f64, f64)>,
    /// Labels joined since the performance point was last written.
    pub dirty: bool,
    /// Closed for drift.
    pub closed: bool,
}

/// Counters since the start, written as `fathom_monitor`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Predictions received.
    pub predictions: u64,
    /// Labels received.
    pub labels: u64,
    /// Prediction–label pairs joined.
    pub joined: u64,
    /// Predictions repeated (same `request_id`).
    pub duplicate_predictions: u64,
    /// Labels repeated.
    pub duplicate_labels: u64,
    /// Labels that came after their prediction expired.
    pub labels_after_expiry: u64,
    /// Predictions that came after their window closed.
    pub late_predictions: u64,
    /// Predictions whose label never came within `max_delay`.
    pub expired: u64,
}

/// A model's monitoring state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelState {
    /// Tumbling windows by start, ms.
    pub windows: BTreeMap<i64, Window>,
    /// Newest prediction time seen, ms.
    pub newest_ms: i64,
    /// Newest prediction time per input partition, ms: the stream's clock is the slowest
    /// partition's, so one partition read ahead of another does not make the other's
    /// predictions late.
    pub partitions: BTreeMap<i32, i64>,
    /// Newest label time per label partition, ms: a window's performance is final only once the
    /// label stream, too, has passed its end by `max_delay`.
    pub label_partitions: BTreeMap<i32, i64>,
    /// Windows ending at or before this are closed for drift, ms.
    pub closed_ms: i64,
    /// Windows ending at or before this are final for performance, ms.
    pub final_ms: i64,
    /// Alert rule states, in rule order.
    pub rules: Vec<RuleState>,
    /// Retraining rule state.
    pub retrain: RuleState,
    /// Counters.
    pub counters: Counters,
}

/// A rule transition for the caller to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Alert rule index, or `None` for the retraining rule.
    pub rule: Option<usize>,
    /// Fired or resolved.
    pub transition: Transition,
    /// The metric's value.
    pub value: f64,
    /// The window, ms.
    pub start_ms: i64,
    /// Its end, ms.
    pub end_ms: i64,
    /// Features whose drift reached their possible threshold, most drifted first.
    pub drifted: Vec<(String, f64)>,
}

/// Metric values of one window, by name, for rules.
type Metrics = BTreeMap<&'static str, f64>;

/// One model's monitor: settings, the reference binning and the state.
pub struct ModelMonitor {
    /// Settings.
    pub settings: Settings,
    features: Vec<(String, Binner)>,
    prediction: Option<Binner>,
    /// The state (checkpointed by the caller).
    pub state: ModelState,
}

fn ns(ms: i64) -> i64 {
    ms.saturating_mul(1_000_000)
}

fn floor(ts: i64, step: i64) -> i64 {
    ts.div_euclid(step) * step
}

/// The entry of a profile for a feature named as in prediction records (`set.feature` or
/// `set__feature`).
fn lookup<'a>(profile: &'a Profile, name: &str) -> Option<&'a FeatureProfile> {
    profile.features.get(name).or_else(|| profile.features.get(&name.replace("__", ".")))
}

impl ModelMonitor {
    /// A monitor over `profile`'s features; a profile entry named `prediction` (from
    /// `fathom profile --prediction`) is the reference of the model's output.
    pub fn new(settings: Settings, profile: &Profile, state: ModelState) -> ModelMonitor {
        let features = profile
            .features
            .iter()
            .filter(|(name, _)| name.as_str() != "prediction")
            .map(|(name, p)| (name.clone(), Binner::of(p)))
            .collect();
        let prediction = lookup(profile, "prediction").map(Binner::of);
        let mut state = state;
        state.rules.resize(settings.rules.len(), RuleState::default());
        ModelMonitor { settings, features, prediction, state }
    }

    /// The value of a feature in a record: its name, or `set.feature` spelled `set__feature`.
    fn value<'a>(record: &'a Prediction, name: &str) -> Option<&'a serde_json::Value> {
        record
            .features
            .get(name)
            .or_else(|| record.features.get(&name.replace('.', "__")))
            .or_else(|| name.split_once('.').and_then(|(_, f)| record.features.get(f)))
            .filter(|v| !v.is_null())
    }

    fn window_mut(&mut self, start: i64) -> &mut Window {
        let (features, prediction_bins) = (&self.features, self.prediction.as_ref().map_or(0, Binner::bins));
        let closed = start + self.settings.window_ms <= self.state.closed_ms;
        self.state.windows.entry(start).or_insert_with(|| {
            let mut bins: Vec<Vec<u64>> = features.iter().map(|(_, b)| vec![0; b.bins()]).collect();
            bins.push(vec![0; prediction_bins]);
            // a window first seen after its time closed: its predictions are all late
            Window { missing: vec![0; features.len()], bins, closed, ..Window::default() }
        })
    }

    /// The start of the window holding `ts_ms`.
    pub fn window_of(&self, ts_ms: i64) -> i64 {
        floor(ts_ms, self.settings.window_ms)
    }

    /// Whether a prediction made at `ts_ms` can no longer get a label (its window is final).
    pub fn expired(&self, ts_ms: i64) -> bool {
        self.window_of(ts_ms) + self.settings.window_ms <= self.state.final_ms
    }

    /// The stream's event-time clock: the newest prediction time of the slowest partition.
    pub fn clock_ms(&self) -> i64 {
        self.state.partitions.values().min().copied().unwrap_or(self.state.newest_ms)
    }

    /// The label stream's clock, once labels were seen.
    fn label_clock_ms(&self) -> Option<i64> {
        self.state.label_partitions.values().min().copied()
    }

    /// Notes a label's time (from `partition`, `-1` for HTTP push) for the label clock.
    pub fn label_seen(&mut self, ts_ms: i64, partition: i32) {
        let newest = self.state.label_partitions.entry(partition).or_insert(ts_ms);
        *newest = (*newest).max(ts_ms);
    }

    /// Counts a new (not duplicate) prediction, read from `partition` (`-1` for HTTP push), into
    /// its window.
    pub fn prediction(&mut self, record: &Prediction, partition: i32) {
        self.state.counters.predictions += 1;
        self.state.newest_ms = self.state.newest_ms.max(record.ts_ms);
        let newest = self.state.partitions.entry(partition).or_insert(record.ts_ms);
        *newest = (*newest).max(record.ts_ms);
        let start = self.window_of(record.ts_ms);
        if start + self.settings.window_ms <= self.state.final_ms {
            self.state.counters.late_predictions += 1;
            return; // nothing of this window is kept any more
        }
        let feature_bins: Vec<Option<usize>> =
            self.features.iter().map(|(name, b)| b.bin(Self::value(record, name))).collect();
        let prediction_bin = self.prediction.as_ref().and_then(|b| match &record.outcome {
            Outcome::Value(x) => b.bin(Some(&serde_json::json!(x))),
            Outcome::Class { class, .. } => b.bin(Some(&serde_json::Value::String(class.clone()))),
        });
        let window = self.window_mut(start);
        window.predictions += 1;
        if window.closed {
            window.late += 1;
        } else {
            for (f, bin) in feature_bins.iter().enumerate() {
                match bin {
                    Some(b) => window.bins[f][*b] += 1,
                    None => window.missing[f] += 1,
                }
            }
            if let Some(b) = prediction_bin {
                window.bins.last_mut().expect("prediction bins")[b] += 1;
            }
            match &record.outcome {
                Outcome::Class { class, .. } => *window.classes.entry(class.clone()).or_insert(0) += 1,
                Outcome::Value(x) if x.is_finite() => {
                    let v = &mut window.values;
                    if v.0 == 0 {
                        (v.3, v.4) = (*x, *x);
                    }
                    v.0 += 1;
                    v.1 += x;
                    v.2 += x * x;
                    v.3 = v.3.min(*x);
                    v.4 = v.4.max(*x);
                }
                Outcome::Value(_) => {}
            }
            if let Some(ms) = record.latency_ms {
                window.fresh_latencies.push(ms);
                if window.fresh_latencies.len() >= 4096 {
                    let fresh = std::mem::take(&mut window.fresh_latencies);
                    window.latencies.add(&fresh);
                }
            }
        }
        if window.closed {
            self.state.counters.late_predictions += 1;
        }
    }

    /// Counts a joined pair into its prediction's window (unless that window is final).
    pub fn pair(&mut self, predicted: &Predicted, labelled: &Labelled) {
        if self.expired(predicted.ts_ms) || labelled.ts_ms - predicted.ts_ms > self.settings.max_delay_ms {
            self.state.counters.labels_after_expiry += 1;
            return;
        }
        self.state.counters.joined += 1;
        let label: serde_json::Value = serde_json::from_str(&labelled.label).unwrap_or(serde_json::Value::Null);
        let start = self.window_of(predicted.ts_ms);
        let window = self.window_mut(start);
        window.dirty = true;
        match &predicted.outcome {
            Outcome::Class { class, probabilities } => window.classified.push(Classified {
                predicted: class.clone(),
                label: class_name(&label).unwrap_or_default(),
                probabilities: probabilities.clone(),
            }),
            Outcome::Value(x) => {
                if let Some(y) = label.as_f64() {
                    window.regressed.push((*x, y));
                }
            }
        }
    }

    /// Closes windows for drift (newest time − lateness passed their end, or all of them when
    /// `idle`), finalises performance (`max_delay` passed), and writes performance that changed.
    /// Returns the points and rule transitions, in window order.
    pub fn advance(&mut self, idle: bool) -> (Vec<Point>, Vec<Event>) {
        let (mut points, mut events) = (Vec::new(), Vec::new());
        let w = self.settings.window_ms;
        let close_to = if idle {
            self.state.windows.keys().next_back().map_or(self.state.closed_ms, |s| s + w).max(self.state.closed_ms)
        } else {
            floor(self.clock_ms() - self.settings.lateness_ms, w).max(self.state.closed_ms)
        };
        let starts: Vec<i64> =
            self.state.windows.iter().filter(|(s, win)| !win.closed && *s + w <= close_to).map(|(s, _)| *s).collect();
        for start in starts {
            self.close(start, &mut points, &mut events);
        }
        self.state.closed_ms = close_to;
        let clock = self.clock_ms().min(self.label_clock_ms().unwrap_or(i64::MAX));
        let final_to =
            floor(clock - self.settings.max_delay_ms.max(self.settings.lateness_ms), w).max(self.state.final_ms);
        let finals: Vec<i64> = self
            .state
            .windows
            .keys()
            .filter(|s| **s + w <= final_to && **s + w > self.state.final_ms)
            .copied()
            .collect();
        for start in finals {
            if !self.state.windows[&start].closed {
                self.close(start, &mut points, &mut events);
            }
            self.performance(start, true, &mut points, &mut events);
            // final: its labelled pairs are never read again, though the window stays for the
            // sliding drift window — free them rather than carry them (and checkpoint them)
            if let Some(window) = self.state.windows.get_mut(&start) {
                window.classified = Vec::new();
                window.regressed = Vec::new();
            }
        }
        self.state.final_ms = final_to;
        let dirty: Vec<i64> = self.state.windows.iter().filter(|(_, win)| win.dirty).map(|(s, _)| *s).collect();
        for start in dirty {
            self.performance(start, false, &mut points, &mut events);
        }
        // drop windows final for performance and beyond the sliding window's reach
        let keep_from = self.state.final_ms.min(self.state.closed_ms - self.settings.sliding_ms.unwrap_or(0));
        self.state.windows.retain(|s, _| s + w > keep_from);
        (points, events)
    }

    fn tags(&self, more: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut tags = vec![("model".to_string(), self.settings.model.clone())];
        tags.extend(more.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        tags
    }

    fn thresholds(&self, feature: &str) -> (f64, f64) {
        self.settings.feature_thresholds.get(feature).copied().unwrap_or(self.settings.thresholds)
    }

    /// Drift of the window's bins (or the sums of several windows') as points.
    fn drift_points(
        &self,
        bins: &[Vec<u64>],
        kind: &str,
        end_ms: i64,
        points: &mut Vec<Point>,
    ) -> (Vec<Drift>, Vec<(String, f64)>) {
        let mut drifts = Vec::with_capacity(self.features.len());
        let mut drifted = Vec::new();
        for (f, (name, binner)) in self.features.iter().enumerate() {
            let live = &bins[f];
            if live.iter().sum::<u64>() == 0 {
                // the feature never had a value here: nothing to compare, no statistics, and
                // left out of the model's score — but said, so a gap is not mistaken for calm
                points.push(Point {
                    measurement: "fathom_feature_drift".into(),
                    tags: self.tags(&[("feature", name), ("window", kind)]),
                    fields: vec![
                        ("status".into(), Field::Str(status_name(Status::NoData).into())),
                        ("count".into(), Field::Int(0)),
                    ],
                    time_ns: ns(end_ms),
                });
                continue;
            }
            let d = binner.drift(live);
            let (possible, detected) = self.thresholds(name);
            let status = status_name(if d.score() >= detected {
                Status::DriftDetected
            } else if d.score() >= possible {
                Status::PossibleDrift
            } else {
                Status::NoDrift
            });
            if d.score() >= possible {
                drifted.push((name.clone(), d.score()));
            }
            points.push(drift_point(self.tags(&[("feature", name), ("window", kind)]), &d, status, live, end_ms));
            drifts.push(d);
        }
        if let Some(binner) = &self.prediction {
            let live = bins.last().expect("prediction bins");
            if live.iter().sum::<u64>() > 0 {
                let d = binner.drift(live);
                let status = status_name(drift::status(&[d], self.settings.thresholds.0, self.settings.thresholds.1).1);
                points.push(drift_point(
                    self.tags(&[("feature", "prediction"), ("window", kind)]),
                    &d,
                    status,
                    live,
                    end_ms,
                ));
            }
        }
        drifted.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        (drifts, drifted)
    }

    fn close(&mut self, start: i64, points: &mut Vec<Point>, events: &mut Vec<Event>) {
        let w = self.settings.window_ms;
        let end = start + w;
        {
            let window = self.state.windows.get_mut(&start).expect("window");
            window.closed = true;
            let fresh = std::mem::take(&mut window.fresh_latencies);
            window.latencies.add(&fresh);
        }
        let window = &self.state.windows[&start];
        let (drifts, drifted) = self.drift_points(&window.bins, "tumbling", end, points);
        let (score, status) = drift::status(&drifts, self.settings.thresholds.0, self.settings.thresholds.1);
        let mut metrics: Metrics = BTreeMap::new();
        if !drifts.is_empty() {
            metrics.insert("drift_score", score);
            metrics.insert("drift_status", status_code(status) as f64);
            points.push(Point {
                measurement: "fathom_model_drift".into(),
                tags: self.tags(&[("window", "tumbling")]),
                fields: vec![
                    ("score".into(), Field::Float(score)),
                    ("status".into(), Field::Str(status_name(status).into())),
                    ("status_code".into(), Field::Int(status_code(status))),
                    ("features".into(), Field::Int(drifts.len() as i64)),
                    ("features_drifted".into(), Field::Int(drifted.len() as i64)),
                    ("predictions".into(), Field::Int(window.predictions as i64)),
                ],
                time_ns: ns(end),
            });
        }
        if let Some(sliding) = self.settings.sliding_ms.filter(|s| *s > w) {
            let mut sums: Vec<Vec<u64>> = window.bins.iter().map(|b| vec![0; b.len()]).collect();
            for (_, other) in self.state.windows.range(end - sliding..end) {
                for (sum, bins) in sums.iter_mut().zip(&other.bins) {
                    for (s, b) in sum.iter_mut().zip(bins) {
                        *s += b;
                    }
                }
            }
            let (drifts, _) = self.drift_points(&sums, "sliding", end, points);
            if !drifts.is_empty() {
                let (score, status) = drift::status(&drifts, self.settings.thresholds.0, self.settings.thresholds.1);
                points.push(Point {
                    measurement: "fathom_model_drift".into(),
                    tags: self.tags(&[("window", "sliding")]),
                    fields: vec![
                        ("score".into(), Field::Float(score)),
                        ("status".into(), Field::Str(status_name(status).into())),
                        ("status_code".into(), Field::Int(status_code(status))),
                        ("features".into(), Field::Int(drifts.len() as i64)),
                    ],
                    time_ns: ns(end),
                });
            }
        }
        points.extend(self.serving_points(window, end, &mut metrics));
        self.observe(&metrics, start, end, &drifted, events, points);
    }

    fn serving_points(&self, window: &Window, end: i64, metrics: &mut Metrics) -> Vec<Point> {
        let seconds = self.settings.window_ms as f64 / 1000.0;
        let mut fields = vec![
            ("requests".into(), Field::Int(window.predictions as i64)),
            ("throughput".into(), Field::Float(window.predictions as f64 / seconds)),
        ];
        metrics.insert("throughput", window.predictions as f64 / seconds);
        let h = window.latencies.histogram();
        if !h.is_empty() {
            for (name, q) in [("latency_p50", 0.5), ("latency_p95", 0.95), ("latency_p99", 0.99)] {
                let ms = h.value_at_quantile(q) as f64 / 1000.0;
                fields.push((name.into(), Field::Float(ms)));
                metrics.insert(name, ms);
            }
            fields.push(("latency_mean".into(), Field::Float(h.mean() / 1000.0)));
            fields.push(("latency_max".into(), Field::Float(h.max() as f64 / 1000.0)));
        }
        let mut points =
            vec![Point { measurement: "fathom_serving".into(), tags: self.tags(&[]), fields, time_ns: ns(end) }];
        let total: u64 = window.classes.values().sum();
        for (class, n) in &window.classes {
            points.push(Point {
                measurement: "fathom_predictions".into(),
                tags: self.tags(&[("class", class)]),
                fields: vec![
                    ("count".into(), Field::Int(*n as i64)),
                    ("share".into(), Field::Float(*n as f64 / total as f64)),
                ],
                time_ns: ns(end),
            });
        }
        let (n, sum, sumsq, min, max) = window.values;
        if n > 0 {
            let mean = sum / n as f64;
            points.push(Point {
                measurement: "fathom_predictions".into(),
                tags: self.tags(&[("class", "")]),
                fields: vec![
                    ("count".into(), Field::Int(n as i64)),
                    ("mean".into(), Field::Float(mean)),
                    ("std".into(), Field::Float((sumsq / n as f64 - mean * mean).max(0.0).sqrt())),
                    ("min".into(), Field::Float(min)),
                    ("max".into(), Field::Float(max)),
                ],
                time_ns: ns(end),
            });
        }
        points
    }

    fn performance(&mut self, start: i64, last: bool, points: &mut Vec<Point>, events: &mut Vec<Event>) {
        let end = start + self.settings.window_ms;
        let Some(window) = self.state.windows.get_mut(&start) else { return };
        window.dirty = false;
        let labelled = (window.classified.len() + window.regressed.len()) as u64;
        let coverage = if window.predictions == 0 { f64::NAN } else { labelled as f64 / window.predictions as f64 };
        let mut metrics: Metrics = BTreeMap::new();
        let mut fields = vec![
            ("predictions".into(), Field::Int(window.predictions as i64)),
            ("labelled".into(), Field::Int(labelled as i64)),
            ("label_coverage".into(), Field::Float(coverage)),
            ("final".into(), Field::Bool(last)),
        ];
        metrics.insert("label_coverage", coverage);
        if last {
            let expired = window.predictions.saturating_sub(labelled);
            self.state.counters.expired += expired;
            fields.push(("expired".into(), Field::Int(expired as i64)));
        }
        if !window.classified.is_empty() {
            let m = performance::classification(&window.classified, &self.settings.positive_class);
            for (name, value) in [
                ("accuracy", Some(m.accuracy)),
                ("precision", m.precision),
                ("recall", m.recall),
                ("f1", m.f1),
                ("log_loss", m.log_loss),
                ("roc_auc", m.roc_auc),
            ] {
                if let Some(v) = value {
                    fields.push((name.into(), Field::Float(v)));
                    metrics.insert(name, v);
                }
            }
        }
        if !window.regressed.is_empty() {
            let m = performance::regression(&window.regressed);
            for (name, v) in [("mae", m.mae), ("rmse", m.rmse), ("r2", m.r2)] {
                fields.push((name.into(), Field::Float(v)));
                metrics.insert(name, v);
            }
        }
        if window.predictions > 0 {
            points.push(Point {
                measurement: "fathom_model_performance".into(),
                tags: self.tags(&[]),
                fields,
                time_ns: ns(end),
            });
        }
        if last {
            self.observe(&metrics, start, end, &[], events, points);
        }
    }

    /// Feeds a window's metrics to the rules that watch them.
    fn observe(
        &mut self,
        metrics: &Metrics,
        start: i64,
        end: i64,
        drifted: &[(String, f64)],
        events: &mut Vec<Event>,
        points: &mut Vec<Point>,
    ) {
        let rules = self.settings.rules.iter().enumerate().map(|(i, r)| (Some(i), r));
        for (index, rule) in rules.chain(self.settings.retrain.iter().map(|r| (None, r))) {
            let Some(&value) = metrics.get(rule.metric.as_str()) else { continue };
            let state = match index {
                Some(i) => &mut self.state.rules[i],
                None => &mut self.state.retrain,
            };
            if let Some(transition) = state.observe(rule, value, end) {
                if index.is_some() {
                    points.push(Point {
                        measurement: "fathom_alerts".into(),
                        tags: vec![
                            ("model".into(), self.settings.model.clone()),
                            ("rule".into(), rule_name(rule)),
                            ("state".into(), transition_name(transition).into()),
                        ],
                        fields: vec![
                            ("value".into(), Field::Float(value)),
                            ("threshold".into(), Field::Float(rule.threshold)),
                            ("firing".into(), Field::Int(i64::from(transition == Transition::Fired))),
                        ],
                        time_ns: ns(end),
                    });
                }
                events.push(Event {
                    rule: index,
                    transition,
                    value,
                    start_ms: start,
                    end_ms: end,
                    drifted: drifted.to_vec(),
                });
            }
        }
    }

    /// The monitor's own counters as a point at `now_ms`.
    pub fn counters_point(&self, now_ms: i64) -> Point {
        let c = &self.state.counters;
        let fields = [
            ("predictions", c.predictions),
            ("labels", c.labels),
            ("joined", c.joined),
            ("duplicate_predictions", c.duplicate_predictions),
            ("duplicate_labels", c.duplicate_labels),
            ("labels_after_expiry", c.labels_after_expiry),
            ("late_predictions", c.late_predictions),
            ("expired", c.expired),
        ];
        Point {
            measurement: "fathom_monitor".into(),
            tags: self.tags(&[]),
            fields: fields.iter().map(|(k, v)| (k.to_string(), Field::Int(*v as i64))).collect(),
            time_ns: ns(now_ms),
        }
    }
}

/// A rule's name in tags and alerts: `metric >= threshold`.
pub fn rule_name(rule: &Rule) -> String {
    if let Some(name) = &rule.name {
        return name.clone();
    }
    let op = serde_json::to_value(rule.comparison).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    format!("{} {op} {}", rule.metric, rule.threshold)
}

/// `fired` or `resolved`, as alerts and points spell a transition.
pub fn transition_name(t: Transition) -> &'static str {
    match t {
        Transition::Fired => "fired",
        Transition::Resolved => "resolved",
    }
}

/// `no_drift`, `possible_drift`, `drift_detected`.
pub fn status_name(status: Status) -> &'static str {
    match status {
        Status::NoDrift => "no_drift",
        Status::PossibleDrift => "possible_drift",
        Status::DriftDetected => "drift_detected",
        Status::NoData => "no_data",
    }
}

/// 0, 1, 2 (and −1 for no data).
pub fn status_code(status: Status) -> i64 {
    match status {
        Status::NoData => -1,
        Status::NoDrift => 0,
        Status::PossibleDrift => 1,
        Status::DriftDetected => 2,
    }
}

fn drift_point(tags: Vec<(String, String)>, d: &Drift, status: &str, live: &[u64], end_ms: i64) -> Point {
    let mut fields = vec![
        ("tvd".into(), Field::Float(d.tvd)),
        ("hellinger".into(), Field::Float(d.hellinger)),
        ("kl".into(), Field::Float(d.kl)),
        ("psi".into(), Field::Float(d.psi)),
        ("js".into(), Field::Float(d.js)),
        ("score".into(), Field::Float(d.score())),
        ("status".into(), Field::Str(status.into())),
        ("count".into(), Field::Int(live.iter().sum::<u64>() as i64)),
    ];
    for (name, v) in [("wasserstein", d.wasserstein), ("ks", d.ks), ("ks_p", d.ks_p), ("chi2_p", d.chi2_p)] {
        if let Some(v) = v {
            fields.push((name.into(), Field::Float(v)));
        }
    }
    Point { measurement: "fathom_feature_drift".into(), tags, fields, time_ns: ns(end_ms) }
}

#[cfg(test)]
mod tests;
