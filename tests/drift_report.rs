//! `fathom drift` on a CSV reference and a Parquet current table written by pandas/pyarrow,
//! checked against scipy and numpy computing the same statistics on the same data: exact KS
//! (`ks_2samp`) and Wasserstein-1 on the raw samples, TVD/Hellinger/PSI on the reference's 20
//! equal-width bins plus the outer ones, χ² for the categorical column; and the HTML page.

mod common;

use serde_json::Value;

const SCRIPT: &str = r#"
import sys, json
import numpy as np, pandas as pd
from scipy.stats import ks_2samp, wasserstein_distance, chi2_contingency
out = sys.argv[1]
rng = np.random.default_rng(7)
n1, n2 = 3000, 2500
ref = pd.DataFrame({
    "amount": rng.gamma(2.0, 20.0, n1).round(2),
    "age": rng.integers(18, 90, n1),
    "country": rng.choice(["DE", "FR", "IT", "ES"], n1, p=[.4, .3, .2, .1]),
})
cur = pd.DataFrame({
    "amount": rng.gamma(2.2, 21.0, n2).round(2),
    "age": rng.integers(18, 95, n2),
    "country": rng.choice(["DE", "FR", "IT", "BR"], n2, p=[.3, .3, .3, .1]),
})
ref.loc[5, "amount"] = np.nan
ref.to_csv(f"{out}/reference.csv", index=False)
cur.to_parquet(f"{out}/current.parquet")
expected = {}
for col in ["amount", "age"]:
    a, b = ref[col].dropna().to_numpy(float), cur[col].dropna().to_numpy(float)
    r = ks_2samp(a, b)
    lo, hi = a.min(), a.max()
    def counts(x):
        i = np.clip(np.floor((x - lo) / (hi - lo) * 20), 0, 19).astype(int) + 1
        i = np.where(x < lo, 0, np.where(x > hi, 21, i))
        return np.bincount(i, minlength=22).astype(float)
    p, q = counts(a) / len(a), counts(b) / len(b)
    pg, qg = np.where(p > 0, p, 1e-4), np.where(q > 0, q, 1e-4)
    expected[col] = {
        "ks": float(r.statistic), "ks_p": float(r.pvalue), "wasserstein": float(wasserstein_distance(a, b)),
        "tvd": float(0.5 * np.abs(p - q).sum()), "hellinger": float(np.sqrt(max(0, 1 - np.sqrt(p * q).sum()))),
        "psi": float(((qg - pg) * np.log(qg / pg)).sum()),
    }
cats = ["DE", "FR", "IT", "ES"]
rc = np.array([(ref.country == c).sum() for c in cats] + [0], float)
lc = np.array([(cur.country == c).sum() for c in cats] + [(~cur.country.isin(cats)).sum()], float)
keep = (rc + lc) > 0
expected["country"] = {"tvd": float(0.5 * np.abs(rc / rc.sum() - lc / lc.sum()).sum()),
                       "chi2_p": float(chi2_contingency(np.array([rc[keep], lc[keep]]), correction=False)[1])}
print(json.dumps(expected))
"#;

#[test]
fn drift_report_matches_scipy_on_csv_and_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = std::process::Command::new(common::python()).args(["-c", SCRIPT, d]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected: Value = serde_json::from_slice(&out.stdout).unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_fathom"))
        .args(["drift", "--reference", &format!("{d}/reference.csv"), "--current", &format!("{d}/current.parquet")])
        .args(["--json", &format!("{d}/drift.json"), "--html", &format!("{d}/drift.html")])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report: Value = serde_json::from_slice(&std::fs::read(format!("{d}/drift.json")).unwrap()).unwrap();
    let features = report["features"].as_array().unwrap();
    assert_eq!(features.len(), 3);
    let scores: Vec<f64> = features.iter().map(|f| f["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "most drifted first: {scores:?}");
    let mut compared = 0;
    for f in features {
        let name = f["name"].as_str().unwrap();
        for (stat, want) in expected[name].as_object().unwrap() {
            let got = f["drift"][stat].as_f64().unwrap_or_else(|| panic!("{name}.{stat} in {f}"));
            let want = want.as_f64().unwrap();
            // an exact KS p-value is 1 − P(inside the band) in scipy as here: both carry an
            // absolute rounding error near 1e-15, which a small p-value turns into a relative one
            let floor = if stat == "ks_p" { 1e-14 } else { 0.0 };
            let close = (got - want).abs() <= 1e-9 * want.abs() + floor;
            assert!(close, "{name}.{stat}: fathom {got:e} vs scipy {want:e}");
            compared += 1;
        }
    }
    assert_eq!(compared, 6 + 6 + 2);
    let amount = features.iter().find(|f| f["name"] == "amount").unwrap();
    assert_eq!(amount["missing"], serde_json::json!([1, 0]), "the empty CSV cell counts as missing");
    let page = std::fs::read_to_string(format!("{d}/drift.html")).unwrap();
    for name in ["amount", "age", "country"] {
        assert!(page.contains(&format!("<h2>{name} ")), "{name} has a section");
    }
    assert_eq!(page.matches("<svg").count(), 3);
    assert!(!page.contains("<script") && !page.contains("src=\"http"), "self-contained");
}
