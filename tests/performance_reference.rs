//! Performance metrics against scikit-learn (installed by the test command) on fixed data, to
//! 1e-9 relative: binary and multi-class classification with probabilities (tied scores
//! included), and regression.

mod common;

use std::collections::BTreeMap;

use fathom_monitor::performance::{self, Classified};
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
    let mut child = std::process::Command::new(common::python())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected: Value = serde_json::from_slice(&out.stdout).unwrap();
    let got = json!({
        "binary": performance::classification(&binary),
        "multi": performance::classification(&multi),
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
