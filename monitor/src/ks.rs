//! The two-sample Kolmogorov–Smirnov test on raw samples, two-sided, with the p-value computed
//! the way `scipy.stats.ks_2samp` (method `auto`) computes it:
//!
//! - the statistic D = max |F₁(v) − F₂(v)| over every sample value;
//! - when both samples have at most 10,000 values, the exact p-value: D is rounded to the lattice
//!   (h / lcm(n₁, n₂)) and P(D ≥ d) counted over the monotone lattice paths from (0, 0) to
//!   (n₁, n₂) — the closed alternating sum for equal sizes, else Viehmann's recursion for the
//!   share of paths that leave the band, column by column (every entry a probability, so nothing
//!   overflows and small p-values keep their precision);
//! - otherwise the distribution of the one-sample statistic, `kstwo.sf(d, round(n₁ n₂ / (n₁ + n₂)))`,
//!   with scipy's choice of method per region: the Durbin matrix (exact; scipy uses Pomeranz's
//!   equally exact recursion for part of it), twice the exact one-sided tail (Birnbaum–Tingey)
//!   where n d² is large, and the Pelz–Good expansion elsewhere.

use statrs::function::gamma::ln_gamma;

/// Largest sample scipy's `auto` method still tests exactly.
pub const MAX_EXACT_N: usize = 10_000;

/// D and its two-sided p-value for two samples, each sorted ascending (NaN-free).
pub fn ks_2samp(x: &[f64], y: &[f64]) -> (f64, f64) {
    if x.is_empty() || y.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    p_value(x.len(), y.len(), statistic(x, y))
}

/// `scipy.stats.ks_2samp`'s two-sided p-value (method `auto`) for the statistic `d` of samples
/// of sizes `n1` and `n2`, with `d` as scipy reports it (rounded to the lattice h / lcm(n₁, n₂)
/// when the exact method is used). Sizes must be non-zero.
pub fn p_value(n1: usize, n2: usize, d: f64) -> (f64, f64) {
    if n1.max(n2) <= MAX_EXACT_N {
        if let Some((d, p)) = exact(n1, n2, d) {
            return (d, p);
        }
    }
    let (m, n) = (n1.max(n2) as f64, n1.min(n2) as f64);
    let en = (m * n / (m + n)).round();
    (d, kolmogorov_sf(en as u64, d).clamp(0.0, 1.0))
}

/// The two empirical CDFs of sorted samples at each distinct value of either, ascending:
/// `(v, F₁(v), F₂(v))` with ties counted as `searchsorted` right does (every value ≤ v).
pub(crate) fn ecdf_steps<'a>(x: &'a [f64], y: &'a [f64]) -> impl Iterator<Item = (f64, f64, f64)> + 'a {
    let (n1, n2) = (x.len() as f64, y.len() as f64);
    let (mut i, mut j) = (0usize, 0usize);
    std::iter::from_fn(move || {
        let v = match (x.get(i), y.get(j)) {
            (Some(a), Some(b)) => a.min(*b),
            (Some(a), None) => *a,
            (None, Some(b)) => *b,
            (None, None) => return None,
        };
        while i < x.len() && x[i] <= v {
            i += 1;
        }
        while j < y.len() && y[j] <= v {
            j += 1;
        }
        Some((v, i as f64 / n1, j as f64 / n2))
    })
}

/// max |F₁ − F₂| evaluated at every value of both samples.
fn statistic(x: &[f64], y: &[f64]) -> f64 {
    ecdf_steps(x, y).map(|(_, f1, f2)| (f1 - f2).abs()).fold(0.0, f64::max)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// scipy's `_attempt_exact_2kssamp`: the lattice statistic and its exact p-value, or `None` when
/// the count overflows.
fn exact(n1: usize, n2: usize, d: f64) -> Option<(f64, f64)> {
    let g = gcd(n1, n2);
    let lcm = (n1 / g) as f64 * n2 as f64;
    let h = (d * lcm).round();
    let d = h / lcm;
    if h == 0.0 {
        return Some((d, 1.0));
    }
    let h = h as u64;
    let p = if n1 == n2 { outside_square(n1 as u64, h) } else { outside(n1 as u64, n2 as u64, g as u64, h) };
    (p.is_finite() && (0.0..=1.0).contains(&p)).then_some((d, p))
}

/// Equal sizes: the share of paths that leave the band |x − y| < h (an alternating sum).
fn outside_square(n: u64, h: u64) -> f64 {
    let mut p = 0.0;
    let mut k = (n / h) as i64;
    while k >= 0 {
        let k_ = k as u64;
        let mut p1 = 1.0;
        for j in 0..h {
            p1 = (n as f64 - (k_ * h) as f64 - j as f64) * p1 / (n as f64 + (k_ * h) as f64 + j as f64 + 1.0);
        }
        p = p1 * (1.0 - p);
        k -= 1;
    }
    2.0 * p
}

/// The share of lattice paths from (0, 0) to (m, n) that leave the band
/// |i n/g − j m/g| < h, computed directly (not as 1 − the share inside, which cancels to
/// nothing for small p-values) by Viehmann's recursion over one sliding column, as scipy's
/// `_compute_outer_prob_inside_method`: every entry is a probability, so nothing overflows.
/// T. Viehmann, "Numerically more stable computation of the p-values for the two-sample
/// Kolmogorov-Smirnov test", arXiv:2102.08037 (2021).
fn outside(m: u64, n: u64, g: u64, h: u64) -> f64 {
    let (m, n) = if m < n { (n as i64, m as i64) } else { (m as i64, n as i64) };
    let (mg, ng, h) = ((m / g as i64), (n / g as i64), h as i64);
    // a[j − min_j] = share of paths to (i, j) that already left the band; entries past the
    // window are 1 (outside)
    let mut a = vec![1.0f64; n as usize + 2];
    let (mut min_j, mut max_j) = (0i64, ((h + mg - 1) / mg).min(n + 1));
    a[..max_j as usize].fill(0.0);
    let mut len = max_j - min_j;
    for i in 1..=m {
        let (last_min_j, last_len) = (min_j, len);
        min_j = ((ng * i - h).div_euclid(mg) + 1).clamp(0, n);
        max_j = ((ng * i + h + mg - 1).div_euclid(mg)).min(n + 1);
        if max_j <= min_j {
            return 1.0;
        }
        let mut val = if min_j == 0 { 0.0 } else { 1.0 };
        let (fi, shift) = (i as f64, min_j - last_min_j);
        for jj in 0..max_j - min_j {
            let j = (jj + min_j) as f64;
            val = (a[(jj + shift) as usize] * fi + val * j) / (fi + j);
            a[jj as usize] = val;
        }
        len = max_j - min_j;
        if last_len > len {
            a[len as usize..last_len as usize].fill(1.0);
        }
    }
    a[(max_j - min_j - 1) as usize]
}

fn ldexp(x: f64, e: i32) -> f64 {
    // in steps, so intermediate powers of two stay representable
    let mut x = x;
    let mut e = e;
    while e > 1000 {
        x *= 2f64.powi(1000);
        e -= 1000;
    }
    while e < -1000 {
        x *= 2f64.powi(-1000);
        e += 1000;
    }
    x * 2f64.powi(e)
}

/// P(D⁺ₙ ≥ x), the exact one-sided tail (Birnbaum–Tingey), summed in log space.
pub fn smirnov(n: u64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    if x >= 1.0 {
        return 0.0;
    }
    let nf = n as f64;
    let last = (nf * (1.0 - x)).floor() as u64;
    let ln_n = ln_gamma(nf + 1.0);
    let mut logs = Vec::with_capacity(last as usize + 1);
    for j in 0..=last {
        let jf = j as f64;
        let a = 1.0 - x - jf / nf;
        if a <= 0.0 {
            continue;
        }
        let b = x + jf / nf;
        let log_binom = ln_n - ln_gamma(jf + 1.0) - ln_gamma(nf - jf + 1.0);
        logs.push(log_binom + (nf - jf) * a.ln() + (jf - 1.0) * b.ln());
    }
    let top = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !top.is_finite() {
        return 0.0;
    }
    let sum: f64 = logs.iter().map(|l| (l - top).exp()).sum();
    (x * sum.ln().exp() * top.exp()).clamp(0.0, 1.0)
}

/// `scipy.stats.kstwo.sf(x, n)` for the branches the two-sample asymptotic test reaches.
pub fn kolmogorov_sf(n: u64, x: f64) -> f64 {
    let nf = n as f64;
    if x >= 1.0 {
        return 0.0;
    }
    if x <= 0.0 {
        return 1.0;
    }
    let t = nf * x;
    if t <= 1.0 {
        if t <= 0.5 {
            return 1.0;
        }
        let log_cdf = ln_gamma(nf + 1.0) - nf * nf.ln() + nf * (2.0 * t - 1.0).ln();
        return 1.0 - log_cdf.exp();
    }
    if t >= nf - 1.0 {
        return 2.0 * (1.0 - x).powf(nf);
    }
    if x >= 0.5 {
        return 2.0 * smirnov(n, x);
    }
    let nxx = t * x;
    if n <= 140 {
        // scipy: Durbin matrix below 0.754693, Pomeranz below 4 (both exact), then Miller
        if nxx <= 4.0 {
            return 1.0 - durbin_cdf(n, x);
        }
        return (2.0 * smirnov(n, x)).clamp(0.0, 1.0);
    }
    if nxx >= 370.0 {
        return 0.0;
    }
    if nxx >= 2.2 {
        return (2.0 * smirnov(n, x)).clamp(0.0, 1.0);
    }
    if n <= 100_000 && nf * x.powf(1.5) <= 1.4 {
        return 1.0 - durbin_cdf(n, x);
    }
    1.0 - pelz_good_cdf(nf, x)
}

/// P(Dₙ ≤ d) exactly by the Durbin matrix (Marsaglia, Tsang and Wang's method, as scipy's
/// `_kolmogn_DMTW`): the k-th diagonal element of Hⁿ times n!/nⁿ, with binary exponents kept
/// aside.
fn durbin_cdf(n: u64, d: f64) -> f64 {
    if d >= 1.0 {
        return 1.0;
    }
    let nd = n as f64 * d;
    if nd <= 0.5 {
        return 0.0;
    }
    let k = nd.ceil() as usize;
    let h = k as f64 - nd;
    let m = 2 * k - 1;
    let mut v: Vec<f64> = (1..=m).map(|j| 1.0 - h.powi(j as i32)).collect();
    let mut w = vec![0.0; m];
    let mut fac = 1.0;
    for j in 1..=m {
        w[j - 1] = fac;
        fac /= j as f64;
        v[j - 1] *= fac;
    }
    let tt = (2.0 * h - 1.0).max(0.0).powi(m as i32) - 2.0 * h.powi(m as i32);
    v[m - 1] = (1.0 + tt) * fac;
    let mut hm = vec![0.0; m * m];
    for i in 1..m {
        for r in (i - 1)..m {
            hm[r * m + i] = w[r - (i - 1)];
        }
    }
    for r in 0..m {
        hm[r * m] = v[r];
    }
    for c in 0..m {
        hm[(m - 1) * m + c] = v[m - 1 - c];
    }
    let matmul = |a: &[f64], b: &[f64]| -> Vec<f64> {
        let mut out = vec![0.0; m * m];
        for i in 0..m {
            for l in 0..m {
                let x = a[i * m + l];
                if x != 0.0 {
                    for j in 0..m {
                        out[i * m + j] += x * b[l * m + j];
                    }
                }
            }
        }
        out
    };
    let mut power: Vec<f64> = (0..m * m).map(|i| if i / m == i % m { 1.0 } else { 0.0 }).collect();
    let (mut nn, mut exponent, mut h_exponent) = (n, 0i64, 0i64);
    let two128 = 2f64.powi(128);
    while nn > 0 {
        if nn % 2 == 1 {
            power = matmul(&power, &hm);
            exponent += h_exponent;
        }
        hm = matmul(&hm, &hm);
        h_exponent *= 2;
        if hm[(k - 1) * m + (k - 1)].abs() > two128 {
            for x in &mut hm {
                *x /= two128;
            }
            h_exponent += 128;
        }
        nn /= 2;
    }
    let mut p = power[(k - 1) * m + (k - 1)];
    for i in 1..=n {
        p = i as f64 * p / n as f64;
        if p.abs() < 2f64.powi(-128) {
            p *= two128;
            exponent -= 128;
        }
    }
    ldexp(p, exponent.clamp(-4000, 4000) as i32)
}

/// The Pelz–Good approximation of P(Dₙ ≤ x) (scipy's `_kolmogn_PelzGood`).
fn pelz_good_cdf(n: f64, x: f64) -> f64 {
    use std::f64::consts::PI;
    let pi2 = PI * PI;
    let (pi4, pi6) = (pi2 * pi2, pi2 * pi2 * pi2);
    let z = n.sqrt() * x;
    let (z2, z3, z4, z6) = (z * z, z * z * z, z.powi(4), z.powi(6));
    let qlog = -pi2 / 8.0 / z2;
    if qlog < -745.0 {
        return 0.0;
    }
    let q = qlog.exp();
    let (k1a, k1b) = (-z2, pi2 / 4.0);
    let (k2a, k2b, k2c) = (6.0 * z6 + 2.0 * z4, (2.0 * z4 - 5.0 * z2) * pi2 / 4.0, pi4 * (1.0 - 2.0 * z2) / 16.0);
    let k3d = pi6 * (5.0 - 30.0 * z2) / 64.0;
    let k3c = pi4 * (-60.0 * z2 + 212.0 * z4) / 16.0;
    let k3b = pi2 * (135.0 * z4 - 96.0 * z6) / 4.0;
    let k3a = -30.0 * z6 - 90.0 * z.powi(8);
    let mut k = [0.0f64; 4];
    let maxk = (16.0 * z / PI).ceil() as i64;
    for kk in (1..=maxk).rev() {
        let m = (2 * kk - 1) as f64;
        let (m2, m4, m6) = (m * m, m.powi(4), m.powi(6));
        let qpower = q.powf(8.0 * kk as f64);
        let coeffs = [1.0, k1a + k1b * m2, k2a + k2b * m2 + k2c * m4, k3a + k3b * m2 + k3c * m4 + k3d * m6];
        for (acc, c) in k.iter_mut().zip(coeffs) {
            *acc = *acc * qpower + c;
        }
    }
    let sqrt2pi = (2.0 * PI).sqrt();
    let denominators = [z, 6.0 * z4, 72.0 * z.powi(7), 6480.0 * z.powi(10)];
    for (acc, d) in k.iter_mut().zip(denominators) {
        *acc = *acc * q * sqrt2pi / d;
    }
    let q = (-pi2 / 2.0 / z2).exp();
    let (mut k2extra, mut k3extra) = (0.0, 0.0);
    let sqrt3z = 3f64.sqrt() * z;
    for kk in (1..=maxk).rev() {
        let kf = kk as f64;
        let qp = q.powf(kf * kf);
        k2extra += kf * kf * qp;
        let kspi = PI * kf;
        k3extra += (sqrt3z + kspi) * (sqrt3z - kspi) * kf * kf * qp;
    }
    k[2] += k2extra * pi2 * sqrt2pi / (-36.0 * z3);
    k[3] += k3extra * pi2 * sqrt2pi / (216.0 * z6);
    k.iter().enumerate().map(|(i, v)| v / n.powf(i as f64 / 2.0)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_counts_agree_with_brute_force_enumeration() {
        // all C(7, 3) = 35 orderings of samples of sizes 4 and 3: P(D ≥ d) by enumeration
        let (n1, n2) = (4usize, 3usize);
        let mut ds = Vec::new();
        for mask in 0u32..(1 << 7) {
            if mask.count_ones() as usize != n1 {
                continue;
            }
            let (mut a, mut b, mut d) = (0.0f64, 0.0f64, 0.0f64);
            for bit in 0..7 {
                if mask & (1 << bit) != 0 {
                    a += 1.0 / n1 as f64;
                } else {
                    b += 1.0 / n2 as f64;
                }
                d = d.max((a - b).abs());
            }
            ds.push(d);
        }
        for &d in &ds {
            let expected = ds.iter().filter(|&&e| e >= d - 1e-12).count() as f64 / ds.len() as f64;
            let (_, p) = exact(n1, n2, d).unwrap();
            assert!((p - expected).abs() < 1e-12, "d = {d}: {p} vs {expected}");
        }
        // equal sizes through the alternating sum
        let (_, p) = exact(3, 3, 1.0).unwrap();
        assert!((p - 2.0 / 20.0).abs() < 1e-12, "{p}");
    }
}
