//! Model performance over the predictions of a window whose labels arrived (DESIGN §7).
//!
//! Classification: accuracy; precision, recall and F1 of the positive class for two classes
//! (the class `1`/`true` when present, else the second in sorted order), macro averages over
//! the classes for more; log-loss over the predicted probabilities (clipped to [1e-15, 1 − 1e-15]
//! like scikit-learn); ROC AUC from the positive class's probability (two classes) or the macro
//! average of one-vs-rest AUCs (more), with tied scores counted half (the trapezoidal AUC).
//! Regression: MAE, RMSE, R². The definitions are scikit-learn's, and tests compare them with it.

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
    /// Positive-class (binary) or macro (multi-class) precision.
    pub precision: f64,
    /// Positive-class or macro recall.
    pub recall: f64,
    /// Positive-class or macro F1.
    pub f1: f64,
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

/// Classification metrics of labelled predictions.
pub fn classification(records: &[Classified]) -> ClassificationMetrics {
    let n = records.len();
    if n == 0 {
        return ClassificationMetrics::default();
    }
    let classes: BTreeSet<&str> = records.iter().flat_map(|r| [r.label.as_str(), r.predicted.as_str()]).collect();
    let classes: Vec<&str> = classes.into_iter().collect();
    let correct = records.iter().filter(|r| r.predicted == r.label).count();
    let per_class = |class: &str| {
        let tp = records.iter().filter(|r| r.predicted == class && r.label == class).count() as f64;
        let predicted = records.iter().filter(|r| r.predicted == class).count() as f64;
        let actual = records.iter().filter(|r| r.label == class).count() as f64;
        let (precision, recall) = (safe_div(tp, predicted), safe_div(tp, actual));
        (precision, recall, safe_div(2.0 * precision * recall, precision + recall))
    };
    let positive = (classes.len() <= 2)
        .then(|| ["1", "true"].into_iter().find(|c| classes.contains(c)).unwrap_or(classes[classes.len() - 1]));
    let (precision, recall, f1) = match positive {
        Some(class) => per_class(class),
        None => {
            let all: Vec<(f64, f64, f64)> = classes.iter().map(|c| per_class(c)).collect();
            let k = all.len() as f64;
            (
                all.iter().map(|a| a.0).sum::<f64>() / k,
                all.iter().map(|a| a.1).sum::<f64>() / k,
                all.iter().map(|a| a.2).sum::<f64>() / k,
            )
        }
    };
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
        let eps = 1e-15;
        let loss = with_probabilities.iter().map(|r| -probability(r, &r.label).clamp(eps, 1.0 - eps).ln()).sum::<f64>()
            / n as f64;
        let auc = match positive {
            Some(class) => {
                let mut scored: Vec<(f64, bool)> =
                    with_probabilities.iter().map(|r| (score(r, class), r.label == class)).collect();
                auc(&mut scored)
            }
            None => {
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
