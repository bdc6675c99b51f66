//! Every drift statistic against numpy/scipy (installed by the test command), to 1e-9 relative:
//! the binned ones on the same bins, each computed by scipy from its definition rather than by
//! our formula, and the raw-sample KS test against `scipy.stats.ks_2samp` over sizes from 1 to
//! 10^6.

mod common;

use common::Xorshift;
use fathom_monitor::drift;
use serde_json::Value;

/// Deterministic counts: (reference, live) per case, 22 bins numeric or 6 categories.
fn cases() -> Vec<(Vec<u64>, Vec<u64>)> {
    let mut rng = Xorshift(0x2545_f491_4f6c_dd1d);
    let mut next = |n: u64| rng.below(n);
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

/// Each statistic from scipy/numpy by a route of its own, not drift.rs's formula: TVD as half
/// the L1 (cityblock) distance, Hellinger as the Euclidean distance of the square roots over √2,
/// KL and PSI from scipy's elementwise relative entropy (PSI = KL(p‖q) + KL(q‖p)), KS and
/// Wasserstein from the two samples with every value at its bin's centre, χ² by scipy. The
/// cases come on standard input.
const BINNED: &str = r#"
import sys, json
import numpy as np
from scipy.spatial.distance import jensenshannon, cityblock, euclidean
from scipy.special import rel_entr
from scipy.stats import wasserstein_distance, chi2_contingency, ks_2samp
cases, edges = json.load(sys.stdin), np.array(json.loads(sys.argv[1]))
eps = 1e-4
out = []
for ref, live in cases:
    ref, live = np.array(ref, float), np.array(live, float)
    p, q = ref / ref.sum(), live / live.sum()
    pg, qg = np.where(p > 0, p, eps), np.where(q > 0, q, eps)
    r = {
        "tvd": cityblock(p, q) / 2,
        "hellinger": euclidean(np.sqrt(p), np.sqrt(q)) / np.sqrt(2),
        "kl": (rel_entr(pg, qg).sum() + rel_entr(qg, pg).sum()) / 2,
        "psi": rel_entr(pg, qg).sum() + rel_entr(qg, pg).sum(),
        "js": jensenshannon(p, q),
    }
    if len(ref) == len(edges) + 1:
        w = edges[1] - edges[0]
        centres = np.concatenate([[edges[0] - w / 2], (edges[:-1] + edges[1:]) / 2, [edges[-1] + w / 2]])
        a, b = np.repeat(centres, ref.astype(int)), np.repeat(centres, live.astype(int))
        r["wasserstein"] = wasserstein_distance(a, b)
        ks = ks_2samp(a, b, method="auto")
        r["ks"], r["ks_p"] = ks.statistic, ks.pvalue
    else:
        keep = (ref + live) > 0
        r["chi2_p"] = chi2_contingency(np.array([ref[keep], live[keep]]), correction=False)[1]
    out.append({k: float(v) for k, v in r.items()})
print(json.dumps(out))
"#;

/// Fathom's binned statistics against [`BINNED`] for each (reference, live) pair of counts (22
/// bins: numeric on `edges`; otherwise categorical); returns the statistics compared and the
/// reference values.
fn assert_binned_like_scipy(cases: &[(Vec<u64>, Vec<u64>)], edges: &[f64]) -> (usize, Vec<Value>) {
    let input = serde_json::to_string(cases).unwrap();
    let expected: Vec<Value> =
        serde_json::from_value(common::python_json(BINNED, &[&serde_json::to_string(edges).unwrap()], &input)).unwrap();
    let mut compared = 0;
    for ((reference, live), want) in cases.iter().zip(&expected) {
        let got = if reference.len() == edges.len() + 1 {
            drift::numeric(reference, live, edges)
        } else {
            drift::categorical(reference, live)
        };
        let got = serde_json::to_value(got).unwrap();
        for (name, value) in want.as_object().unwrap() {
            let (a, b) = (got[name].as_f64().unwrap(), value.as_f64().unwrap());
            // relative everywhere (tiny p-values too, or both below 1e-300); exact zeros exactly
            let close =
                if b == 0.0 { a.abs() < 1e-15 } else { (a - b).abs() <= 1e-9 * b.abs() || (b < 1e-300 && a < 1e-300) };
            let sizes = (reference.iter().sum::<u64>(), live.iter().sum::<u64>());
            assert!(close, "{name}: fathom {a} vs scipy {b} for {sizes:?} values: {reference:?} / {live:?}");
            compared += 1;
        }
    }
    (compared, expected)
}

fn edges() -> Vec<f64> {
    (0..=20).map(|i| -3.0 + 0.5 * f64::from(i)).collect()
}

#[test]
fn drift_statistics_match_numpy_and_scipy() {
    let (compared, expected) = assert_binned_like_scipy(&cases(), &edges());
    assert_eq!(compared, 8 * 8 + 8 * 6, "every statistic of every case");
    let moderate = expected
        .iter()
        .filter(|w| w["ks_p"].as_f64().or(w["chi2_p"].as_f64()).is_some_and(|p| p > 1e-6 && p < 0.999))
        .count();
    assert!(moderate >= 2, "cases with p-values in a range where the formula matters: {expected:?}");
}

#[test]
fn binned_statistics_match_scipy_over_random_sizes_from_1_to_a_million() {
    // numeric windows of 1 … 10^6 values a side (log-uniform), from one bin to all 22, some the
    // same shape as the reference and some shifted; the KS p-value goes through every branch
    let mut draws = Xorshift(0x5851_f42d_4c95_7f2d);
    let mut cases = Vec::new();
    let mut budget = 8_000_000u64;
    while cases.len() < 40 {
        let (n, m) = (draws.size() as u64, draws.size() as u64);
        if n + m > budget {
            continue;
        }
        budget -= n + m;
        let shape: Vec<f64> = (0..22).map(|_| if draws.uniform() < 0.2 { 0.0 } else { draws.uniform() }).collect();
        let shift = (draws.uniform() * 4.0) as usize; // 0: the same shape
        let spread = |total: u64, offset: usize, draws: &mut Xorshift| -> Vec<u64> {
            let mut counts = vec![0u64; 22];
            let weights: f64 = shape.iter().sum::<f64>().max(1e-9);
            for _ in 0..total.min(2_000) {
                // a few thousand draws place the mass; the rest follows the shares
                let mut u = draws.uniform() * weights;
                let bin = shape.iter().position(|w| {
                    u -= w;
                    u < 0.0
                });
                counts[(bin.unwrap_or(0) + offset) % 22] += 1;
            }
            let placed: u64 = counts.iter().sum();
            if total > placed {
                let scale = total as f64 / placed as f64;
                let mut scaled: Vec<u64> = counts.iter().map(|c| (*c as f64 * scale).floor() as u64).collect();
                let rest = total - scaled.iter().sum::<u64>();
                let top = (0..22).max_by_key(|&i| counts[i]).unwrap();
                scaled[top] += rest;
                counts = scaled;
            }
            counts
        };
        let reference = spread(n, 0, &mut draws);
        let live = spread(m, shift, &mut draws);
        cases.push((reference, live));
    }
    assert!(cases.iter().any(|(r, l)| r.iter().sum::<u64>().max(l.iter().sum()) > 100_000), "large sizes drawn");
    let (compared, _) = assert_binned_like_scipy(&cases, &edges());
    assert_eq!(compared, 40 * 8);
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
    let expected: Vec<(f64, f64)> =
        serde_json::from_value(common::python_json(script, &[], &serde_json::to_string(&cases).unwrap())).unwrap();
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

/// scipy's `ks_2samp(a, b)` (method `auto`) for each pair, the samples passed as raw float64
/// files so that pairs of 10^6 values stay cheap.
fn scipy_ks(cases: &[(Vec<f64>, Vec<f64>)]) -> Vec<(f64, f64)> {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (i, (a, b)) in cases.iter().enumerate() {
        for (side, sample) in [("a", a), ("b", b)] {
            let path = dir.path().join(format!("{i}{side}.f64"));
            let bytes: Vec<u8> = sample.iter().flat_map(|x| x.to_le_bytes()).collect();
            std::fs::write(&path, bytes).unwrap();
            paths.push(path.display().to_string());
        }
    }
    let script = r#"
import sys, json
import numpy as np
from scipy.stats import ks_2samp
paths = sys.argv[1:]
out = []
for a, b in zip(paths[::2], paths[1::2]):
    r = ks_2samp(np.fromfile(a, dtype="<f8"), np.fromfile(b, dtype="<f8"), method="auto")
    out.append([float(r.statistic), float(r.pvalue)])
print(json.dumps(out))
"#;
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    serde_json::from_value(common::python_json(script, &paths, "")).unwrap()
}

/// Fathom's KS against scipy's for one list of pairs: D to 1e-12, p to 1e-9 relative (or both
/// below 1e-300).
fn assert_ks_like_scipy(cases: &[(Vec<f64>, Vec<f64>)], what: &[String]) {
    let expected = scipy_ks(cases);
    for (((a, b), (d, p)), what) in cases.iter().zip(&expected).zip(what) {
        let (mut x, mut y) = (a.clone(), b.clone());
        x.sort_by(f64::total_cmp);
        y.sort_by(f64::total_cmp);
        let (got_d, got_p) = fathom_monitor::ks::ks_2samp(&x, &y);
        assert!((got_d - d).abs() <= 1e-12, "D for {what}: fathom {got_d} vs scipy {d}");
        let close = if *p < 1e-300 { got_p < 1e-300 } else { (got_p - p).abs() <= 1e-9 * p };
        assert!(close, "p for {what} (D = {d}): fathom {got_p:e} vs scipy {p:e}");
    }
}

#[test]
fn ks_p_values_match_scipy_on_the_reported_large_samples() {
    let mut draws = Xorshift(0x853c_49e6_748f_ea9b);
    let reference: Vec<f64> = (0..4_999).map(|_| draws.normal(10.0, 1.0)).collect();
    let current: Vec<f64> = (0..6_007).map(|_| draws.normal(12.0, 1.0)).collect();
    let low: Vec<f64> = (0..4_500).map(|_| draws.uniform()).collect();
    let high: Vec<f64> = (0..4_500).map(|_| 2.0 + draws.uniform()).collect();
    let cases = vec![(reference, current), (low, high)];
    assert_ks_like_scipy(&cases, &["N(10,1) x 4999 vs N(12,1) x 6007".into(), "disjoint 4500 vs 4500".into()]);
}

#[test]
fn ks_p_values_match_scipy_over_random_sizes_from_1_to_a_million() {
    let mut draws = Xorshift(0x9e37_79b9_7f4a_7c15);
    let (mut cases, mut what) = (Vec::new(), Vec::new());
    let mut budget = 6_000_000usize; // values in all, to bound the run
    for case in 0..60 {
        let (n1, n2) = match case % 6 {
            0 => (draws.size(), draws.size()),
            1 => {
                let n = draws.size();
                (n, n) // equal sizes: scipy's alternating sum
            }
            2 => (draws.size(), 1 + draws.size() / 1000), // skewed
            _ => (draws.size().min(12_000), draws.size().min(12_000)), // around the exact limit
        };
        if n1 + n2 > budget {
            continue;
        }
        budget -= n1 + n2;
        let kind = case % 5;
        let shift = [0.0, 0.05, 0.3, 5.0, 0.1][kind]; // 5.0: disjoint samples, D = 1
        let ties = kind == 4; // values on a grid of 0.1: many ties within and across samples
        let mut sample = |n: usize, s: f64| -> Vec<f64> {
            (0..n)
                .map(|_| {
                    let x = draws.normal(s, 1.0);
                    if ties {
                        (x * 10.0).round() / 10.0
                    } else if kind == 3 {
                        s + draws.uniform() // disjoint: [0, 1) against [5, 6)
                    } else {
                        x
                    }
                })
                .collect()
        };
        let pair = (sample(n1, 0.0), sample(n2, shift));
        what.push(format!("sizes {n1} / {n2}, shift {shift}, ties {ties}"));
        cases.push(pair);
    }
    assert!(cases.len() >= 40, "{} cases", cases.len());
    assert!(cases.iter().any(|(a, b)| a.len().max(b.len()) > 100_000), "large sizes drawn");
    assert_ks_like_scipy(&cases, &what);
}
