//! Performance metrics against scikit-learn (installed by the test command), to 1e-9 relative:
//! binary and multi-class classification with probabilities (tied scores included) and
//! regression on fixed data, and a property test over random windows — single-class ones
//! included — with scikit-learn's `zero_division=np.nan` as the reference for undefined values.

mod common;

use std::collections::BTreeMap;

use fathom_monitor::performance::{self, Classified, PositiveClass};
use serde_json::{json, Value};

fn next(state: &mut u64, n: u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state % n
}

#[test]
fn classification_and_regression_metrics_match_scikit_learn() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    // binary: scores rounded to a tenth so ties happen; multi-class: three classes
    let mut binary = Vec::new();
    for _ in 0..400 {
        let label = next(&mut state, 2);
        let score = ((next(&mut state, 10) as f64 + if label == 1 { 3.0 } else { 0.0 }) / 13.0 * 10.0).round() / 10.0;
        let score = score.clamp(0.0, 1.0);
        let predicted = if score >= 0.5 { "1" } else { "0" };
        let probabilities = BTreeMap::from([("0".to_string(), 1.0 - score), ("1".to_string(), score)]);
        binary.push(Classified {
            predicted: predicted.into(),
            label: label.to_string(),
            probabilities: Some(probabilities),
        });
    }
    let classes = ["cat", "dog", "eel"];
    let mut multi = Vec::new();
    for _ in 0..300 {
        let label = classes[next(&mut state, 3) as usize];
        let mut weights: Vec<f64> =
            classes.iter().map(|c| 1.0 + next(&mut state, 20) as f64 + if *c == label { 8.0 } else { 0.0 }).collect();
        let total: f64 = weights.iter().sum();
        weights.iter_mut().for_each(|w| *w /= total);
        let best = (0..3).max_by(|a, b| weights[*a].total_cmp(&weights[*b])).unwrap();
        let probabilities = classes.iter().zip(&weights).map(|(c, w)| (c.to_string(), *w)).collect();
        multi.push(Classified {
            predicted: classes[best].into(),
            label: label.into(),
            probabilities: Some(probabilities),
        });
    }
    let regression: Vec<(f64, f64)> = (0..250)
        .map(|_| {
            let y = next(&mut state, 1000) as f64 / 7.0;
            (y + (next(&mut state, 200) as f64 - 100.0) / 9.0, y)
        })
        .collect();

    let records = |r: &[Classified]| {
        r.iter().map(|c| json!({"p": c.predicted, "y": c.label, "proba": c.probabilities})).collect::<Vec<_>>()
    };
    let input =
        json!({"binary": records(&binary), "multi": records(&multi), "classes": classes, "regression": regression});
    let script = r#"
import sys, json
import numpy as np
from sklearn import metrics as m
data = json.loads(sys.stdin.read())
def cls(records, average, labels):
    y = [r["y"] for r in records]; p = [r["p"] for r in records]
    proba = np.array([[r["proba"][c] for c in labels] for r in records])
    out = {"accuracy": m.accuracy_score(y, p), "log_loss": m.log_loss(y, proba, labels=labels)}
    if average == "binary":
        out.update(precision=m.precision_score(y, p, pos_label="1"), recall=m.recall_score(y, p, pos_label="1"),
                   f1=m.f1_score(y, p, pos_label="1"), roc_auc=m.roc_auc_score([v == "1" for v in y], proba[:, 1]))
    else:
        out.update(precision=m.precision_score(y, p, average="macro", zero_division=0), recall=m.recall_score(y, p, average="macro"),
                   f1=m.f1_score(y, p, average="macro"), roc_auc=m.roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=labels))
    return out
reg = np.array(data["regression"])
print(json.dumps({
    "binary": cls(data["binary"], "binary", ["0", "1"]),
    "multi": cls(data["multi"], "macro", data["classes"]),
    "regression": {"mae": m.mean_absolute_error(reg[:, 1], reg[:, 0]), "rmse": float(np.sqrt(m.mean_squared_error(reg[:, 1], reg[:, 0]))),
                   "r2": m.r2_score(reg[:, 1], reg[:, 0])},
}))
"#;
    let expected = common::python_json(script, &[], &input.to_string());
    let got = json!({
        "binary": performance::classification(&binary, &PositiveClass::default()),
        "multi": performance::classification(&multi, &PositiveClass::default()),
        "regression": performance::regression(&regression),
    });
    let mut compared = 0;
    for (kind, metrics) in expected.as_object().unwrap() {
        for (name, want) in metrics.as_object().unwrap() {
            let (a, b) = (got[kind][name].as_f64().unwrap(), want.as_f64().unwrap());
            assert!((a - b).abs() <= 1e-9 * b.abs().max(1e-300), "{kind}.{name}: fathom {a} vs scikit-learn {b}");
            compared += 1;
        }
    }
    assert_eq!(compared, 6 + 6 + 3);
}

/// scikit-learn's metrics of each window as JSON objects (undefined values `null`).
fn scikit_learn(windows: &[Vec<Classified>], positive: &str) -> Vec<Value> {
    let input = json!({
        "positive": positive,
        "windows": windows.iter().map(|w| w.iter().map(|c| json!({"p": c.predicted, "y": c.label, "proba": c.probabilities})).collect::<Vec<_>>()).collect::<Vec<_>>(),
    });
    let script = r#"
import sys, json, warnings
import numpy as np
from sklearn import metrics as m
warnings.simplefilter("ignore")
data = json.loads(sys.stdin.read())
pos = data["positive"]
def clean(x):
    x = float(x)
    return None if np.isnan(x) else x
out = []
for records in data["windows"]:
    y = [r["y"] for r in records]; p = [r["p"] for r in records]
    labels = sorted(set(y) | set(p))
    binary = len([c for c in labels if c != pos]) <= 1
    if binary:
        kw = dict(pos_label=pos, average="binary", zero_division=np.nan)
    else:
        kw = dict(average="macro", zero_division=np.nan)
    r = {"accuracy": m.accuracy_score(y, p), "precision": clean(m.precision_score(y, p, **kw)),
         "recall": clean(m.recall_score(y, p, **kw)), "f1": clean(m.f1_score(y, p, **kw))}
    if binary:
        classes = sorted(set(records[0]["proba"].keys()))
        proba = np.array([[rec["proba"][c] for c in classes] for rec in records])
        r["log_loss"] = m.log_loss(y, proba, labels=classes)
        if len(set(v == pos for v in y)) == 2 and pos in classes:
            r["roc_auc"] = m.roc_auc_score([v == pos for v in y], proba[:, classes.index(pos)])
        else:
            r["roc_auc"] = None
    out.append(r)
print(json.dumps(out))
"#;
    serde_json::from_value(common::python_json(script, &[], &input.to_string())).unwrap()
}

/// Random binary windows: sizes 1-30, each window's label and prediction shares drawn anew so
/// that single-class windows (every label 0, every prediction 1, …) are common; probabilities
/// rounded so that ties and the clipped extremes 0 and 1 occur.
fn random_windows(state: &mut u64, count: usize, classes: [&str; 2]) -> Vec<Vec<Classified>> {
    (0..count)
        .map(|_| {
            let size = 1 + next(state, 30) as usize;
            let (label_share, predicted_share) = (next(state, 5), next(state, 5)); // 0 = never, 4 = always
            (0..size)
                .map(|_| {
                    let label = next(state, 4) < label_share;
                    let predicted = next(state, 4) < predicted_share;
                    let score = next(state, 11) as f64 / 10.0;
                    let probabilities =
                        BTreeMap::from([(classes[0].to_string(), 1.0 - score), (classes[1].to_string(), score)]);
                    Classified {
                        predicted: classes[usize::from(predicted)].into(),
                        label: classes[usize::from(label)].into(),
                        probabilities: Some(probabilities),
                    }
                })
                .collect()
        })
        .collect()
}

fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * b.abs().max(1e-300),
        _ => a.is_null() && b.is_null(),
    }
}

#[test]
fn window_metrics_match_scikit_learn_over_random_windows_single_class_ones_included() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for (classes, positive) in [(["0", "1"], "1"), (["legit", "fraud"], "fraud"), (["false", "true"], "1")] {
        let windows = random_windows(&mut state, 150, classes);
        // scikit-learn spells the default positive class of boolean labels `true`
        let reference = scikit_learn(&windows, if classes[1] == "true" { "true" } else { positive });
        let mut single_class = 0;
        for (window, want) in windows.iter().zip(&reference) {
            let got = serde_json::to_value(performance::classification(window, &PositiveClass::new(positive))).unwrap();
            for (name, value) in want.as_object().unwrap() {
                assert!(
                    same(&got[name], value),
                    "{name} with positive class {positive:?}: fathom {} vs scikit-learn {value} for {:?}",
                    got[name],
                    window.iter().map(|c| (&c.label, &c.predicted)).collect::<Vec<_>>()
                );
            }
            let labels: std::collections::BTreeSet<&str> =
                window.iter().flat_map(|c| [c.label.as_str(), c.predicted.as_str()]).collect();
            single_class += usize::from(labels.len() == 1);
        }
        assert!(single_class >= 10, "single-class windows drawn: {single_class}");
    }
}
