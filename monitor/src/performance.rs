//! Model performance over the predictions of a window whose labels arrived (DESIGN §7).
//!
//! Classification: accuracy; precision, recall and F1 of the model's positive class
//! ([`PositiveClass`], fixed per model, never inferred from a window) when the window holds at
//! most that class and one other — scikit-learn's `average="binary"` with `pos_label` — and
//! macro averages over the classes seen when it holds more; log-loss over the predicted
//! probabilities, clipped to [ε, 1 − ε] with ε the float64 machine epsilon (scikit-learn ≥ 1.5);
//! ROC AUC from the positive class's probability (two classes) or the macro average of
//! one-vs-rest AUCs (more), with tied scores counted half (the trapezoidal AUC).
//! Regression: MAE, RMSE, R². The definitions are scikit-learn's, and tests compare them with it.
//!
//! Zero division follows scikit-learn's `zero_division=np.nan`: precision is undefined (`None`)
//! when nothing was predicted positive, recall when no label is positive, F1 when neither
//! happened (F1 = 2 TP / (2 TP + FP + FN)); a macro average leaves undefined classes out and is
//! `None` when every class is. An undefined value is never reported as 0 or 1.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One labelled classification prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classified {
    /// Predicted class.
    pub predicted: String,
    /// True class.
    pub label: String,
    /// Predicted probability per class, when the model gives them.
    pub probabilities: Option<BTreeMap<String, f64>>,
}

/// Classification metrics of a window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassificationMetrics {
    /// Predictions counted.
    pub count: u64,
    /// Share predicted right.
    pub accuracy: f64,
    /// Positive-class (binary) or macro (multi-class) precision; `None` when undefined.
    pub precision: Option<f64>,
    /// Positive-class or macro recall; `None` when undefined.
    pub recall: Option<f64>,
    /// Positive-class or macro F1; `None` when undefined.
    pub f1: Option<f64>,
    /// Mean negative log-likelihood of the true class (when probabilities are given).
    pub log_loss: Option<f64>,
    /// ROC AUC (when probabilities are given and both outcomes occur).
    pub roc_auc: Option<f64>,
}

/// Regression metrics of a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    /// Predictions counted.
    pub count: u64,
    /// Mean absolute error.
    pub mae: f64,
    /// Root mean squared error.
    pub rmse: f64,
    /// Coefficient of determination, 1 − SS_res / SS_tot; with constant labels 1 when predicted
    /// exactly, else 0 (scikit-learn's `force_finite`).
    pub r2: f64,
}

fn safe_div(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        0.0
    } else {
        a / b
    }
}

/// The trapezoidal AUC of scores for positives against negatives (ties count half).
fn auc(scored: &mut [(f64, bool)]) -> Option<f64> {
    let positives = scored.iter().filter(|(_, p)| *p).count() as f64;
    let negatives = scored.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Mann–Whitney: sum of the positives' average ranks
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < scored.len() {
        let mut j = i;
        while j < scored.len() && scored[j].0 == scored[i].0 {
            j += 1;
        }
        let average_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += average_rank * scored[i..j].iter().filter(|(_, p)| *p).count() as f64;
        i = j;
    }
    Some((rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives))
}

/// The class a binary model's precision, recall, F1 and ROC AUC are about: configured per
/// model (`monitoring.positive_class`), by default `1` — which also matches the label `true`,
/// as labels of either spelling are common for binary models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositiveClass(String);

impl PositiveClass {
    /// The class named `name` (as labels and predictions spell it).
    pub fn new(name: impl Into<String>) -> PositiveClass {
        PositiveClass(name.into())
    }

    /// Whether `class` is the positive class.
    pub fn is(&self, class: &str) -> bool {
        class == self.0 || (self.0 == "1" && class == "true")
    }
}

impl Default for PositiveClass {
    fn default() -> PositiveClass {
        PositiveClass::new("1")
    }
}

/// The mean of the defined values; `None` when none is.
fn nan_mean(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let defined: Vec<f64> = values.flatten().collect();
    (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64)
}

/// Precision, recall and F1 of the records for which `is_class` holds, each `None` when undefined.
fn scores(records: &[Classified], is_class: impl Fn(&str) -> bool) -> [Option<f64>; 3] {
    let (mut tp, mut fp, mut fn_) = (0u64, 0u64, 0u64);
    for r in records {
        match (is_class(&r.predicted), is_class(&r.label)) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            (false, false) => {}
        }
    }
    let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
    [ratio(tp, tp + fp), ratio(tp, tp + fn_), ratio(2 * tp, 2 * tp + fp + fn_)]
}

/// Classification metrics of labelled predictions, for a model whose positive class is `positive`.
pub fn classification(records: &[Classified], positive: &PositiveClass) -> ClassificationMetrics {
    let n = records.len();
    if n == 0 {
        return ClassificationMetrics::default();
    }
    let classes: BTreeSet<&str> = records.iter().flat_map(|r| [r.label.as_str(), r.predicted.as_str()]).collect();
    let classes: Vec<&str> = classes.into_iter().collect();
    let correct = records.iter().filter(|r| r.predicted == r.label).count();
    let binary = classes.iter().filter(|c| !positive.is(c)).count() <= 1;
    let [precision, recall, f1] = if binary {
        scores(records, |c| positive.is(c))
    } else {
        let per_class: Vec<[Option<f64>; 3]> = classes.iter().map(|&k| scores(records, |c| c == k)).collect();
        [0, 1, 2].map(|i| nan_mean(per_class.iter().map(|s| s[i])))
    };
    // the class whose probability ranks the records for a binary ROC AUC
    let positive_name = classes.iter().copied().find(|c| positive.is(c));
    let with_probabilities: Vec<&Classified> = records.iter().filter(|r| r.probabilities.is_some()).collect();
    // the model's probability of a class: as given for ranking (renormalising could split ties
    // by an ulp), normalised to sum to one for the log-loss
    let score = |r: &Classified, class: &str| -> f64 {
        r.probabilities.as_ref().and_then(|m| m.get(class)).copied().unwrap_or(0.0)
    };
    let probability = |r: &Classified, class: &str| -> f64 {
        let total: f64 = r.probabilities.as_ref().map_or(0.0, |m| m.values().sum());
        safe_div(score(r, class), total)
    };
    let (log_loss, roc_auc) = if with_probabilities.len() == n {
        let eps = f64::EPSILON;
        let loss = with_probabilities.iter().map(|r| -probability(r, &r.label).clamp(eps, 1.0 - eps).ln()).sum::<f64>()
            / n as f64;
        let auc = match (binary, positive_name) {
            (true, Some(class)) => {
                let mut scored: Vec<(f64, bool)> =
                    with_probabilities.iter().map(|r| (score(r, class), positive.is(&r.label))).collect();
                auc(&mut scored)
            }
            (true, None) => None, // the positive class never occurs: no ranking to judge
            (false, _) => {
                let aucs: Option<Vec<f64>> = classes
                    .iter()
                    .map(|class| {
                        let mut scored: Vec<(f64, bool)> =
                            with_probabilities.iter().map(|r| (score(r, class), r.label == *class)).collect();
                        auc(&mut scored)
                    })
                    .collect();
                aucs.map(|a| a.iter().sum::<f64>() / a.len() as f64)
            }
        };
        (Some(loss), auc)
    } else {
        (None, None)
    };
    ClassificationMetrics {
        count: n as u64,
        accuracy: correct as f64 / n as f64,
        precision,
        recall,
        f1,
        log_loss,
        roc_auc,
    }
}

/// Regression metrics of (predicted, label) pairs.
pub fn regression(pairs: &[(f64, f64)]) -> RegressionMetrics {
    let n = pairs.len() as f64;
    if pairs.is_empty() {
        return RegressionMetrics::default();
    }
    let mae = pairs.iter().map(|(p, y)| (p - y).abs()).sum::<f64>() / n;
    let ss_res: f64 = pairs.iter().map(|(p, y)| (p - y).powi(2)).sum();
    let mean = pairs.iter().map(|(_, y)| y).sum::<f64>() / n;
    let ss_tot: f64 = pairs.iter().map(|(_, y)| (y - mean).powi(2)).sum();
    let r2 = if ss_tot == 0.0 {
        if ss_res == 0.0 {
            1.0
        } else {
            0.0
        }
    } else {
        1.0 - ss_res / ss_tot
    };
    RegressionMetrics { count: pairs.len() as u64, mae, rmse: (ss_res / n).sqrt(), r2 }
}
