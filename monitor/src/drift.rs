//! Drift between a reference distribution and a live one, on the same bins (DESIGN §7).
//!
//! `p` are the reference bin shares, `q` the live ones. Log-based measures (KL, PSI) replace zero
//! shares with [`EPSILON`]; the others use the shares as they are:
//! - TVD = ½ Σ|p − q| · Hellinger = √(1 − Σ √(p q)) · KL symmetric = ½ (KL(p‖q) + KL(q‖p))
//! - PSI = Σ (q − p) ln(q / p) · Jensen–Shannon distance = √(½ KL(p‖m) + ½ KL(q‖m)), m = (p+q)/2,
//!   natural log (as `scipy.spatial.distance.jensenshannon`)
//! - numeric only: Wasserstein-1 between the two histograms with every bin's mass at its centre
//!   (outer bins: half an inner bin beyond the range), KS statistic = max |CDF_p − CDF_q| over the
//!   bin edges, and its p-value as `scipy.stats.ks_2samp` gives it for the two samples with every
//!   value at its bin's centre ([`crate::ks::p_value`]: exact up to 10,000 values a side)
//! - categorical only: χ² test of homogeneity of the two count vectors (categories empty in both
//!   dropped), p-value from the χ² distribution with k − 1 degrees of freedom (statrs)
//!
//! Model status (MLRun's default): the mean over features of (TVD + Hellinger) / 2, with
//! thresholds for possible (0.5) and detected (0.7) drift.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, ContinuousCDF};

/// The share that replaces a zero in log-based measures.
pub const EPSILON: f64 = 1e-4;

/// Every statistic of one feature in one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    /// Total variation distance.
    pub tvd: f64,
    /// Hellinger distance.
    pub hellinger: f64,
    /// Symmetric Kullback–Leibler divergence.
    pub kl: f64,
    /// Population stability index.
    pub psi: f64,
    /// Jensen–Shannon distance.
    pub js: f64,
    /// Wasserstein-1 distance (numeric features; 0 for categorical).
    pub wasserstein: Option<f64>,
    /// KS statistic (numeric).
    pub ks: Option<f64>,
    /// KS p-value (numeric).
    pub ks_p: Option<f64>,
    /// χ² test p-value (categorical).
    pub chi2_p: Option<f64>,
}

impl Drift {
    /// The feature's contribution to the model status: (TVD + Hellinger) / 2.
    pub fn score(&self) -> f64 {
        (self.tvd + self.hellinger) / 2.0
    }
}

/// Shares of counts (all zero: all zero).
pub fn shares(counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    counts.iter().map(|&c| if total == 0 { 0.0 } else { c as f64 / total as f64 }).collect()
}

fn guarded(x: f64) -> f64 {
    if x > 0.0 {
        x
    } else {
        EPSILON
    }
}

fn kl(p: &[f64], q: &[f64]) -> f64 {
    p.iter().zip(q).map(|(&a, &b)| if a > 0.0 { a * (a / b).ln() } else { 0.0 }).sum()
}

/// The measures every kind of feature gets, from shares on the same bins.
fn common(p: &[f64], q: &[f64]) -> Drift {
    let tvd = 0.5 * p.iter().zip(q).map(|(a, b)| (a - b).abs()).sum::<f64>();
    let bc: f64 = p.iter().zip(q).map(|(a, b)| (a * b).sqrt()).sum();
    let hellinger = (1.0 - bc).max(0.0).sqrt();
    let (pg, qg): (Vec<f64>, Vec<f64>) = p.iter().zip(q).map(|(&a, &b)| (guarded(a), guarded(b))).unzip();
    let kl_sym = 0.5 * (kl(&pg, &qg) + kl(&qg, &pg));
    let psi = pg.iter().zip(&qg).map(|(a, b)| (b - a) * (b / a).ln()).sum();
    let m: Vec<f64> = p.iter().zip(q).map(|(a, b)| (a + b) / 2.0).collect();
    let js = (0.5 * kl(p, &m) + 0.5 * kl(q, &m)).max(0.0).sqrt();
    Drift { tvd, hellinger, kl: kl_sym, psi, js, ..Drift::default() }
}

/// Numeric drift between reference and live counts on the same `edges` (`edges.len() - 1` inner
/// bins, plus one outer bin each side: `counts.len() == edges.len() + 1`).
pub fn numeric(reference: &[u64], live: &[u64], edges: &[f64]) -> Drift {
    let (p, q) = (shares(reference), shares(live));
    let mut drift = common(&p, &q);
    let width = if edges.len() > 1 { (edges[edges.len() - 1] - edges[0]) / (edges.len() - 1) as f64 } else { 1.0 };
    let width = if width > 0.0 { width } else { 1.0 };
    // bin centres, outer bins half a bin beyond the range
    let mut centres = Vec::with_capacity(p.len());
    centres.push(edges[0] - width / 2.0);
    centres.extend(edges.windows(2).map(|w| (w[0] + w[1]) / 2.0));
    centres.push(edges[edges.len() - 1] + width / 2.0);
    let (mut cp, mut cq, mut wasserstein, mut ks) = (0.0, 0.0, 0.0, 0.0f64);
    for i in 0..p.len() {
        cp += p[i];
        cq += q[i];
        ks = ks.max((cp - cq).abs());
        if i + 1 < p.len() {
            wasserstein += (cp - cq).abs() * (centres[i + 1] - centres[i]);
        }
    }
    let (n, m) = (reference.iter().sum::<u64>() as f64, live.iter().sum::<u64>() as f64);
    drift.wasserstein = Some(wasserstein);
    drift.ks = Some(ks);
    if n > 0.0 && m > 0.0 {
        let (d, p) = crate::ks::p_value(n as usize, m as usize, ks);
        (drift.ks, drift.ks_p) = (Some(d), Some(p));
    }
    drift
}

/// Categorical drift between reference and live counts per category (same order; the last entry
/// may be "other").
pub fn categorical(reference: &[u64], live: &[u64]) -> Drift {
    let (p, q) = (shares(reference), shares(live));
    let mut drift = common(&p, &q);
    let (n, m) = (reference.iter().sum::<u64>() as f64, live.iter().sum::<u64>() as f64);
    let used: Vec<(f64, f64)> =
        reference.iter().zip(live).filter(|(a, b)| **a + **b > 0).map(|(&a, &b)| (a as f64, b as f64)).collect();
    drift.chi2_p = (n > 0.0 && m > 0.0 && used.len() > 1).then(|| {
        let total = n + m;
        let statistic: f64 = used
            .iter()
            .map(|&(a, b)| {
                let column = a + b;
                let (ea, eb) = (n * column / total, m * column / total);
                (a - ea).powi(2) / ea + (b - eb).powi(2) / eb
            })
            .sum();
        ChiSquared::new((used.len() - 1) as f64).map_or(f64::NAN, |d| d.sf(statistic))
    });
    drift
}

/// A model's drift status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Below the possible-drift threshold.
    NoDrift,
    /// At or above the possible-drift threshold.
    PossibleDrift,
    /// At or above the detected-drift threshold.
    DriftDetected,
    /// The current data holds no value of the feature: nothing to compare, no statistics, and
    /// the feature is left out of the model's score.
    NoData,
}

/// The model status from its features' drifts: mean of the scores against the thresholds.
pub fn status(drifts: &[Drift], possible: f64, detected: f64) -> (f64, Status) {
    if drifts.is_empty() {
        return (0.0, Status::NoDrift);
    }
    let mean = drifts.iter().map(Drift::score).sum::<f64>() / drifts.len() as f64;
    let status = if mean >= detected {
        Status::DriftDetected
    } else if mean >= possible {
        Status::PossibleDrift
    } else {
        Status::NoDrift
    };
    (mean, status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_distributions_have_no_drift_and_disjoint_ones_the_maximum() {
        let same = numeric(&[0, 5, 10, 5, 0], &[0, 10, 20, 10, 0], &[0.0, 1.0, 2.0, 3.0]);
        assert!(same.tvd.abs() < 1e-15 && same.hellinger.abs() < 1e-7 && same.ks.unwrap().abs() < 1e-15);
        assert!((same.ks_p.unwrap() - 1.0).abs() < 1e-12);
        let apart = categorical(&[10, 0], &[0, 10]);
        assert!((apart.tvd - 1.0).abs() < 1e-15 && (apart.hellinger - 1.0).abs() < 1e-15);
        assert!((apart.js - std::f64::consts::LN_2.sqrt()).abs() < 1e-12);
        assert!(apart.chi2_p.unwrap() < 1e-3);
        assert_eq!(status(&[apart, apart], 0.5, 0.7).1, Status::DriftDetected);
        assert_eq!(status(&[same], 0.5, 0.7).1, Status::NoDrift);
    }
}
