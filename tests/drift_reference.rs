//! Every drift statistic against numpy/scipy computing the same quantities on the same bins
//! (scipy installed by the test command), to 1e-9 relative.

mod common;

use fathom_monitor::drift;
use serde_json::Value;

/// Deterministic counts: (reference, live) per case, 22 bins numeric or 6 categories.
fn cases() -> Vec<(Vec<u64>, Vec<u64>)> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    (0..16)
        .map(|case| {
            let bins = if case % 2 == 0 { 22 } else { 6 };
            let shift = case as u64 % 5;
            let reference: Vec<u64> = (0..bins).map(|i| if i % 7 == 3 { 0 } else { 10 + next(500) }).collect();
            let live: Vec<u64> = if case >= 12 {
                // a little drift: p-values far from 0 and 1
                reference.iter().map(|r| r / 3 + next(8)).collect()
            } else {
                (0..bins)
                    .map(|i| if (i as u64 + shift) % 9 == 0 { 0 } else { next(300) * (1 + (i as u64 * shift) % 4) })
                    .collect()
            };
            (reference, live)
        })
        .collect()
}

#[test]
fn drift_statistics_match_numpy_and_scipy() {
    let edges: Vec<f64> = (0..=20).map(|i| -3.0 + 0.5 * f64::from(i)).collect();
    let script = r#"
import sys, json
import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance, chi2_contingency
from scipy.special import kolmogorov
cases, edges = json.loads(sys.argv[1]), np.array(json.loads(sys.argv[2]))
eps = 1e-4
out = []
for ref, live in cases:
    ref, live = np.array(ref, float), np.array(live, float)
    p, q = ref / ref.sum(), live / live.sum()
    pg, qg = np.where(p > 0, p, eps), np.where(q > 0, q, eps)
    r = {
        "tvd": 0.5 * np.abs(p - q).sum(),
        "hellinger": np.sqrt(max(0.0, 1 - np.sqrt(p * q).sum())),
        "kl": 0.5 * ((pg * np.log(pg / qg)).sum() + (qg * np.log(qg / pg)).sum()),
        "psi": ((qg - pg) * np.log(qg / pg)).sum(),
        "js": jensenshannon(p, q),
    }
    if len(ref) == len(edges) + 1:
        w = edges[1] - edges[0]
        centres = np.concatenate([[edges[0] - w / 2], (edges[:-1] + edges[1:]) / 2, [edges[-1] + w / 2]])
        r["wasserstein"] = wasserstein_distance(centres, centres, p, q)
        d = np.abs(np.cumsum(p) - np.cumsum(q)).max()
        en = np.sqrt(ref.sum() * live.sum() / (ref.sum() + live.sum()))
        r["ks"], r["ks_p"] = d, kolmogorov((en + 0.12 + 0.11 / en) * d)
    else:
        keep = (ref + live) > 0
        r["chi2_p"] = chi2_contingency(np.array([ref[keep], live[keep]]), correction=False)[1]
    out.append({k: float(v) for k, v in r.items()})
print(json.dumps(out))
"#;
    let cases = cases();
    let out = std::process::Command::new(common::python())
        .args(["-c", script, &serde_json::to_string(&cases).unwrap(), &serde_json::to_string(&edges).unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut compared = 0;
    for ((reference, live), want) in cases.iter().zip(&expected) {
        let got = if reference.len() == edges.len() + 1 {
            drift::numeric(reference, live, &edges)
        } else {
            drift::categorical(reference, live)
        };
        let got = serde_json::to_value(got).unwrap();
        for (name, value) in want.as_object().unwrap() {
            let (a, b) = (got[name].as_f64().unwrap(), value.as_f64().unwrap());
            // relative everywhere (tiny p-values too); exact zeros must match exactly
            let close = if b == 0.0 { a.abs() < 1e-15 } else { (a - b).abs() <= 1e-9 * b.abs() };
            assert!(close, "{name}: fathom {a} vs scipy {b} for {reference:?} / {live:?}");
            compared += 1;
        }
    }
    assert_eq!(compared, 8 * 8 + 8 * 6, "every statistic of every case");
    let moderate = expected
        .iter()
        .filter(|w| w["ks_p"].as_f64().or(w["chi2_p"].as_f64()).is_some_and(|p| p > 1e-6 && p < 0.999))
        .count();
    assert!(moderate >= 2, "cases with p-values in a range where the formula matters: {expected:?}");
}

/// Samples for the exact KS comparison: (reference, current), sorted, with ties.
fn ks_cases() -> Vec<(Vec<f64>, Vec<f64>)> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut uniform = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    // (sizes, shift, rounding to create ties): exact equal sizes, exact unequal, the asymptotic
    // regime (over 10,000) in both of its branches, and a very unbalanced pair
    let specs: [(usize, usize, f64, f64); 9] = [
        (40, 40, 0.3, 0.0),
        (300, 300, 0.05, 0.0),
        (120, 77, 0.2, 0.0),
        (1_000, 700, 0.04, 10.0),
        (4_000, 9_000, 0.02, 0.0),
        (10_000, 9_999, 0.0, 0.0),
        (25_000, 12_000, 0.012, 0.0),
        (30_000, 20_000, 0.035, 0.0),
        (20_000, 60, 0.3, 0.0),
    ];
    specs
        .iter()
        .map(|&(n1, n2, shift, round)| {
            let mut draw = |n: usize, s: f64| {
                let mut v: Vec<f64> = (0..n)
                    .map(|_| {
                        let x = uniform() + uniform() + uniform() + s;
                        if round > 0.0 {
                            (x * round).round() / round
                        } else {
                            x
                        }
                    })
                    .collect();
                v.sort_by(f64::total_cmp);
                v
            };
            (draw(n1, 0.0), draw(n2, shift))
        })
        .collect()
}

#[test]
fn exact_ks_matches_scipy_ks_2samp() {
    let script = r#"
import sys, json
from scipy.stats import ks_2samp
cases = json.load(sys.stdin)
print(json.dumps([[float(r.statistic), float(r.pvalue)] for r in (ks_2samp(a, b) for a, b in cases)]))
"#;
    let cases = ks_cases();
    let mut child = std::process::Command::new(common::python())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(serde_json::to_string(&cases).unwrap().as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected: Vec<(f64, f64)> = serde_json::from_slice(&out.stdout).unwrap();
    let mut moderate = 0;
    for ((a, b), (d, p)) in cases.iter().zip(&expected) {
        let (got_d, got_p) = fathom_monitor::ks::ks_2samp(a, b);
        assert!((got_d - d).abs() <= 1e-12, "D for sizes {} / {}: fathom {got_d} vs scipy {d}", a.len(), b.len());
        let close = if *p < 1e-300 { got_p < 1e-290 } else { (got_p - p).abs() <= 1e-9 * p };
        assert!(close, "p for sizes {} / {} (D = {d}): fathom {got_p:e} vs scipy {p:e}", a.len(), b.len());
        moderate += usize::from(*p > 1e-6 && *p < 0.999);
    }
    assert!(moderate >= 4, "p-values where the method matters: {expected:?}");
}
