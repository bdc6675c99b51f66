//! The batch drift report (`fathom drift`): a reference and a current table (CSV or Parquet)
//! compared column by column with the statistics the stream monitor uses, plus the raw-sample
//! versions where raw samples are at hand — the exact two-sample KS test ([`crate::ks`]) and the
//! exact Wasserstein-1 distance — and the model status (mean of (TVD + Hellinger) / 2 against
//! the thresholds). Written as JSON (`fathom.drift/1`) and as one self-contained HTML page with
//! each feature's histograms overlaid, most drifted first.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::drift::{self, Drift, Status};
use crate::profile::{CategoricalProfile, FeatureProfile, NumericProfile, Profile};

/// Categories kept per categorical column when no profile says which.
pub const TOP_K: usize = 20;

/// One column's values.
#[derive(Debug, Clone)]
pub enum Values {
    /// Finite numbers, and how many were missing (null, empty, NaN, a missing-value token).
    Numeric(Vec<f64>, u64),
    /// Text (and booleans), and how many were missing.
    Text(Vec<String>, u64),
    /// A column of a type that is not compared, with the reason.
    Unsupported(String),
}

/// The CSV cells read as missing values: pandas' `read_csv` default `na_values`
/// (`pandas._libs.parsers.STR_NA_VALUES`), the empty cell included. A numeric column may hold
/// them without becoming text, and they count as `missing`.
pub const CSV_MISSING: [&str; 19] = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
    "NULL", "NaN", "None", "n/a", "nan", "null",
];

fn csv_missing(cell: &str) -> bool {
    CSV_MISSING.contains(&cell)
}

/// Why a table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The file could not be read.
    #[error("{path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// Nothing to compare.
    #[error("{0}")]
    Columns(String),
    /// A table without a single row.
    #[error("{path}: the table has no rows, so there is nothing to compare")]
    Empty {
        /// The file.
        path: String,
    },
}

fn read_err(path: &Path, message: impl std::fmt::Display) -> ReportError {
    ReportError::Read { path: path.display().to_string(), message: message.to_string() }
}

/// Reads a table's columns (all, or `only`): Parquet by its types, CSV by its values (a column
/// whose non-empty values all parse as numbers is numeric).
pub fn read_table(path: &Path, only: Option<&[String]>) -> Result<Vec<(String, Values)>, ReportError> {
    let wanted = |name: &str| only.is_none_or(|o| o.iter().any(|c| c == name));
    let is_parquet = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
    let mut out = Vec::new();
    if is_parquet {
        let file = std::fs::File::open(path).map_err(|e| read_err(path, e))?;
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| read_err(path, e))?;
        let schema = builder.schema().clone();
        let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).filter(|n| wanted(n)).collect();
        let mut columns: Vec<Option<Values>> = names
            .iter()
            .map(|n| {
                let field = schema.field_with_name(n).expect("schema column");
                crate::profile::column_kind(field.data_type()).err().map(Values::Unsupported)
            })
            .collect();
        let mut rows = 0usize;
        for batch in builder.with_batch_size(65_536).build().map_err(|e| read_err(path, e))? {
            let batch = batch.map_err(|e| read_err(path, e))?;
            rows += batch.num_rows();
            for (i, name) in names.iter().enumerate() {
                let array = batch.column_by_name(name).expect("schema column");
                if let Some(numbers) = crate::profile::numbers(array) {
                    let entry = columns[i].get_or_insert_with(|| Values::Numeric(Vec::new(), 0));
                    if let Values::Numeric(v, missing) = entry {
                        for x in numbers {
                            match x.filter(|x| x.is_finite()) {
                                Some(x) => v.push(x),
                                None => *missing += 1,
                            }
                        }
                    }
                } else if let Some(texts) = crate::profile::texts(array) {
                    let entry = columns[i].get_or_insert_with(|| Values::Text(Vec::new(), 0));
                    if let Values::Text(v, missing) = entry {
                        for x in texts {
                            match x {
                                Some(x) => v.push(x),
                                None => *missing += 1,
                            }
                        }
                    }
                }
            }
        }
        if rows == 0 {
            return Err(ReportError::Empty { path: path.display().to_string() });
        }
        out.extend(names.into_iter().zip(columns).filter_map(|(n, c)| c.map(|c| (n, c))));
    } else {
        let mut reader = csv::Reader::from_path(path).map_err(|e| read_err(path, e))?;
        let headers: Vec<String> = reader.headers().map_err(|e| read_err(path, e))?.iter().map(String::from).collect();
        let keep: Vec<usize> = (0..headers.len()).filter(|&i| wanted(&headers[i])).collect();
        let mut raw: Vec<Vec<String>> = vec![Vec::new(); keep.len()];
        let mut rows = 0usize;
        for (line, record) in reader.records().enumerate() {
            let record = record.map_err(|e| read_err(path, format!("line {}: {e}", line + 2)))?;
            rows += 1;
            for (slot, &i) in keep.iter().enumerate() {
                raw[slot].push(record.get(i).unwrap_or("").to_string());
            }
        }
        if rows == 0 {
            return Err(ReportError::Empty { path: path.display().to_string() });
        }
        for (slot, &i) in keep.iter().enumerate() {
            let column = std::mem::take(&mut raw[slot]);
            let numeric = column.iter().filter(|v| !csv_missing(v)).all(|v| v.trim().parse::<f64>().is_ok());
            let values = if numeric {
                let mut missing = 0;
                let v = column
                    .iter()
                    .filter_map(|v| {
                        let x = (!csv_missing(v)).then(|| v.trim().parse::<f64>().ok()).flatten();
                        let x = x.filter(|x| x.is_finite());
                        missing += u64::from(x.is_none());
                        x
                    })
                    .collect();
                Values::Numeric(v, missing)
            } else {
                let missing = column.iter().filter(|v| csv_missing(v)).count() as u64;
                Values::Text(column.into_iter().filter(|v| !csv_missing(v)).collect(), missing)
            };
            out.push((headers[i].clone(), values));
        }
    }
    Ok(out)
}

/// One feature's comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FeatureDrift {
    /// Column name.
    pub name: String,
    /// `numeric` or `categorical`.
    pub kind: String,
    /// Values in the reference / current tables.
    pub counts: [u64; 2],
    /// Missing values in the reference / current tables.
    pub missing: [u64; 2],
    /// The statistics: binned ones on the reference bins; `ks`, `ks_p` and `wasserstein` (numeric)
    /// on the raw samples. `None` when either table has no value of the column (status
    /// `no_data`).
    pub drift: Option<Drift>,
    /// (TVD + Hellinger) / 2; `None` with no data.
    pub score: Option<f64>,
    /// The feature's status against the thresholds, or `no_data`.
    pub status: Status,
    /// Bin labels (`[a, b)`, `< min`, `> max`, categories, `other`).
    pub bins: Vec<String>,
    /// Reference / current shares per bin.
    pub shares: [Vec<f64>; 2],
}

/// The whole report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// `fathom.drift/1`.
    pub format: String,
    /// Reference and current file names.
    pub files: [String; 2],
    /// Possible / detected thresholds.
    pub thresholds: [f64; 2],
    /// Mean of the scores of the features that have data; `None` when none has.
    pub score: Option<f64>,
    /// Overall status (`no_data` when no feature has data).
    pub status: Status,
    /// Per feature, most drifted first, those without data last.
    pub features: Vec<FeatureDrift>,
    /// Columns in both tables that are not compared, with the reason.
    #[serde(default)]
    pub skipped: Vec<Skipped>,
}

/// A column left out of the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Skipped {
    /// Column name.
    pub name: String,
    /// Why it is not compared.
    pub reason: String,
}

/// Exact Wasserstein-1 between two sorted samples: ∫ |F₁ − F₂|.
pub fn wasserstein(x: &[f64], y: &[f64]) -> f64 {
    let mut total = 0.0;
    let mut previous: Option<(f64, f64)> = None; // (value, |F₁ − F₂| from it on)
    for (v, f1, f2) in crate::ks::ecdf_steps(x, y) {
        if let Some((p, gap)) = previous {
            total += gap * (v - p);
        }
        previous = Some((v, (f1 - f2).abs()));
    }
    total
}

fn status(score: f64, (possible, detected): (f64, f64)) -> Status {
    if score >= detected {
        Status::DriftDetected
    } else if score >= possible {
        Status::PossibleDrift
    } else {
        Status::NoDrift
    }
}

fn numeric(
    reference: &[f64],
    current: &[f64],
    profile: Option<&NumericProfile>,
) -> (Drift, Vec<String>, [Vec<f64>; 2]) {
    let mut a = reference.to_vec();
    let mut b = current.to_vec();
    a.par_sort_unstable_by(f64::total_cmp);
    b.par_sort_unstable_by(f64::total_cmp);
    let built;
    let binner = match profile {
        Some(p) => p,
        None => {
            built = NumericProfile::build(a.clone(), 0);
            &built
        }
    };
    let mut live = vec![0u64; binner.counts.len()];
    for &x in &b {
        live[binner.bin(x)] += 1;
    }
    let reference_counts: Vec<u64> = if profile.is_some() {
        binner.counts.clone()
    } else {
        let mut c = vec![0u64; binner.counts.len()];
        for &x in &a {
            c[binner.bin(x)] += 1;
        }
        c
    };
    let mut d = drift::numeric(&reference_counts, &live, &binner.edges);
    let (ks, ks_p) = crate::ks::ks_2samp(&a, &b);
    d.ks = Some(ks);
    d.ks_p = Some(ks_p);
    d.wasserstein = Some(wasserstein(&a, &b));
    let e = &binner.edges;
    let mut bins = vec![format!("< {}", short(e[0]))];
    bins.extend(e.windows(2).map(|w| format!("[{}, {})", short(w[0]), short(w[1]))));
    bins.push(format!("> {}", short(e[e.len() - 1])));
    (d, bins, [drift::shares(&reference_counts), drift::shares(&live)])
}

fn short(x: f64) -> String {
    let s = format!("{x:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn categorical(
    reference: &[String],
    current: &[String],
    profile: Option<&CategoricalProfile>,
) -> (Drift, Vec<String>, [Vec<f64>; 2]) {
    let top: Vec<String> = match profile {
        Some(p) => p.top.iter().map(|(v, _)| v.clone()).collect(),
        None => {
            let mut counts: HashMap<&str, u64> = HashMap::new();
            for v in reference {
                *counts.entry(v).or_insert(0) += 1;
            }
            let mut all: Vec<(&str, u64)> = counts.into_iter().collect();
            all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
            all.into_iter().take(TOP_K).map(|(v, _)| v.to_string()).collect()
        }
    };
    let index: HashMap<&str, usize> = top.iter().enumerate().map(|(i, v)| (v.as_str(), i)).collect();
    let count = |values: &[String]| {
        let mut c = vec![0u64; top.len() + 1];
        for v in values {
            c[index.get(v.as_str()).copied().unwrap_or(top.len())] += 1;
        }
        c
    };
    let reference_counts = match profile {
        Some(p) => p.top.iter().map(|(_, n)| *n).chain(std::iter::once(p.other)).collect(),
        None => count(reference),
    };
    let live = count(current);
    let d = drift::categorical(&reference_counts, &live);
    let mut bins = top;
    bins.push("other".into());
    (d, bins, [drift::shares(&reference_counts), drift::shares(&live)])
}

/// Compares every column present in both tables (and in the profile, when one is given).
pub fn compare(
    reference: Vec<(String, Values)>,
    current: Vec<(String, Values)>,
    profile: Option<&Profile>,
    thresholds: (f64, f64),
    files: [String; 2],
) -> Result<Report, ReportError> {
    let mut current: HashMap<String, Values> = current.into_iter().collect();
    let mut skipped = Vec::new();
    let pairs: Vec<(String, Values, Values)> = reference
        .into_iter()
        .filter(|(name, _)| profile.is_none_or(|p| p.features.contains_key(name)))
        .filter_map(|(name, r)| current.remove(&name).map(|c| (name, r, c)))
        .filter_map(|(name, r, c)| match (&r, &c) {
            (Values::Unsupported(reason), _) | (_, Values::Unsupported(reason)) => {
                skipped.push(Skipped { name, reason: reason.clone() });
                None
            }
            _ => Some((name, r, c)),
        })
        .collect();
    if pairs.is_empty() {
        let why = skipped.iter().map(|s| format!("{}: {}", s.name, s.reason)).collect::<Vec<_>>().join("; ");
        let message = if skipped.is_empty() {
            "no column is in both tables (and the profile)".to_string()
        } else {
            format!("no column in both tables can be compared ({why})")
        };
        return Err(ReportError::Columns(message));
    }
    let mut features: Vec<FeatureDrift> =
        pairs.into_par_iter().map(|(name, r, c)| feature(name, &r, &c, profile, thresholds)).collect();
    features.sort_by(|a, b| {
        let score = |f: &FeatureDrift| f.score.unwrap_or(f64::NEG_INFINITY);
        score(b).total_cmp(&score(a)).then_with(|| a.name.cmp(&b.name))
    });
    let scores: Vec<f64> = features.iter().filter_map(|f| f.score).collect();
    let score = (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64);
    Ok(Report {
        format: "fathom.drift/1".into(),
        files,
        thresholds: [thresholds.0, thresholds.1],
        score,
        status: score.map_or(Status::NoData, |s| status(s, thresholds)),
        features,
        skipped,
    })
}

/// One column's comparison; no statistics when either side has no value.
fn feature(name: String, r: &Values, c: &Values, profile: Option<&Profile>, thresholds: (f64, f64)) -> FeatureDrift {
    let feature_profile = profile.and_then(|p| p.features.get(&name));
    let (kind, counts, missing, compared) = match (r, c) {
        (Values::Numeric(a, ma), Values::Numeric(b, mb)) => {
            let p = match feature_profile {
                Some(FeatureProfile::Numeric(n)) => Some(n),
                _ => None,
            };
            let compared = (!a.is_empty() && !b.is_empty()).then(|| numeric(a, b, p));
            ("numeric", [a.len() as u64, b.len() as u64], [*ma, *mb], compared)
        }
        _ => {
            let texts = |v: &Values| match v {
                Values::Text(t, m) => (t.clone(), *m),
                Values::Numeric(x, m) => (x.iter().map(|x| x.to_string()).collect(), *m),
                Values::Unsupported(_) => (Vec::new(), 0),
            };
            let ((a, ma), (b, mb)) = (texts(r), texts(c));
            let p = match feature_profile {
                Some(FeatureProfile::Categorical(c)) => Some(c),
                _ => None,
            };
            let compared = (!a.is_empty() && !b.is_empty()).then(|| categorical(&a, &b, p));
            ("categorical", [a.len() as u64, b.len() as u64], [ma, mb], compared)
        }
    };
    let (drift, score, bins, shares) = match compared {
        Some((d, bins, shares)) => (Some(d), Some(d.score()), bins, shares),
        None => (None, None, Vec::new(), [Vec::new(), Vec::new()]),
    };
    FeatureDrift {
        name,
        kind: kind.into(),
        counts,
        missing,
        drift,
        score,
        status: score.map_or(Status::NoData, |s| status(s, thresholds)),
        bins,
        shares,
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn status_label(s: Status) -> (&'static str, &'static str) {
    match s {
        Status::NoDrift => ("no drift", "#2e7d32"),
        Status::PossibleDrift => ("possible drift", "#ef6c00"),
        Status::DriftDetected => ("drift detected", "#c62828"),
        Status::NoData => ("no data", "#757575"),
    }
}

fn histogram(f: &FeatureDrift) -> String {
    let (width, height, pad) = (640.0, 180.0, 24.0);
    let n = f.bins.len().max(1) as f64;
    let top = f.shares.iter().flatten().copied().fold(0.0f64, f64::max).max(1e-12);
    let bar = (width - 2.0 * pad) / n;
    let mut svg = format!(
        r##"<svg viewBox="0 0 {width} {}" width="{width}" height="{}" role="img" aria-label="histograms of {}">"##,
        height + 40.0,
        height + 40.0,
        escape(&f.name)
    );
    for (k, (color, opacity)) in [("#9e9e9e", 0.75), ("#1565c0", 0.55)].into_iter().enumerate() {
        for (i, share) in f.shares[k].iter().enumerate() {
            let h = share / top * (height - pad);
            let x = pad + i as f64 * bar + if k == 0 { 0.0 } else { bar * 0.2 };
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{color}" fill-opacity="{opacity}"><title>{}: {} {:.4}</title></rect>"#,
                height - h,
                bar * 0.8,
                escape(&f.bins[i]),
                if k == 0 { "reference" } else { "current" },
                share
            );
        }
    }
    let _ = write!(
        svg,
        r##"<line x1="{pad}" y1="{height}" x2="{}" y2="{height}" stroke="#555"/><text x="{pad}" y="{}" font-size="11">{}</text><text x="{}" y="{}" font-size="11" text-anchor="end">{}</text></svg>"##,
        width - pad,
        height + 16.0,
        escape(f.bins.first().map_or("", String::as_str)),
        width - pad,
        height + 16.0,
        escape(f.bins.last().map_or("", String::as_str)),
    );
    svg
}

/// The report as one HTML page with no external resources.
pub fn html(report: &Report) -> String {
    let (label, color) = status_label(report.status);
    let mut page = String::from(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Fathom drift report</title><style>
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1100px}
.card{border:1px solid #ddd;border-radius:8px;padding:1rem;margin:1rem 0}
.badge{color:#fff;border-radius:4px;padding:2px 8px;font-size:.85rem}
table{border-collapse:collapse;font-size:.9rem}td,th{padding:2px 10px;text-align:right}th{text-align:left}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
</style></head><body>"#,
    );
    let _ = write!(
        page,
        r#"<h1>Drift report</h1><p>Reference <code>{}</code> · current <code>{}</code></p>
<p>Overall: <span class="badge" style="background:{color}">{label}</span> score {} (mean of (TVD + Hellinger) / 2; possible ≥ {}, detected ≥ {}) over {} features, most drifted first.</p>
<p class="legend"><span style="background:#9e9e9e"></span>reference<span style="background:#1565c0;opacity:.7"></span>current</p>"#,
        escape(&report.files[0]),
        escape(&report.files[1]),
        report.score.map_or("none".to_string(), |s| format!("{s:.4}")),
        report.thresholds[0],
        report.thresholds[1],
        report.features.len()
    );
    for f in &report.features {
        let (label, color) = status_label(f.status);
        let d = f.drift.as_ref();
        let rows = [
            ("score", f.score),
            ("TVD", d.map(|d| d.tvd)),
            ("Hellinger", d.map(|d| d.hellinger)),
            ("KL (symmetric)", d.map(|d| d.kl)),
            ("PSI", d.map(|d| d.psi)),
            ("Jensen–Shannon", d.map(|d| d.js)),
            ("Wasserstein-1", d.and_then(|d| d.wasserstein)),
            ("KS statistic", d.and_then(|d| d.ks)),
            ("KS p-value", d.and_then(|d| d.ks_p)),
            ("χ² p-value", d.and_then(|d| d.chi2_p)),
        ];
        let table: String =
            rows.into_iter().filter_map(|(n, v)| v.map(|v| format!("<tr><th>{n}</th><td>{v:.6e}</td></tr>"))).collect();
        let _ = write!(
            page,
            r#"<div class="card"><h2>{} <span class="badge" style="background:{color}">{label}</span></h2>
<p>{} · reference {} values ({} missing) · current {} values ({} missing)</p>
<div style="display:flex;gap:2rem;flex-wrap:wrap">{}<table>{table}</table></div></div>"#,
            escape(&f.name),
            f.kind,
            f.counts[0],
            f.missing[0],
            f.counts[1],
            f.missing[1],
            histogram(f)
        );
    }
    page.push_str("</body></html>\n");
    page
}

/// Reads both tables and compares them.
pub fn run(
    reference: &Path,
    current: &Path,
    profile: Option<&Profile>,
    columns: Option<&[String]>,
    thresholds: (f64, f64),
) -> Result<Report, ReportError> {
    let (a, b) = rayon::join(|| read_table(reference, columns), || read_table(current, columns));
    compare(a?, b?, profile, thresholds, [reference.display().to_string(), current.display().to_string()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasserstein_is_the_area_between_the_cdfs() {
        // scipy.stats.wasserstein_distance([0, 1, 3], [5, 6, 8]) = 5
        assert!((wasserstein(&[0.0, 1.0, 3.0], &[5.0, 6.0, 8.0]) - 5.0).abs() < 1e-12);
        // ([0, 1], [0, 0, 1, 1, 1]) = |1 - 1/2 - ... | : F1 = .5 on [0,1), F2 = .4 → 0.1
        assert!((wasserstein(&[0.0, 1.0], &[0.0, 0.0, 1.0, 1.0, 1.0]) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn report_sorts_by_drift_and_renders_every_feature() {
        let same: Vec<f64> = (0..500).map(|i| f64::from(i % 50)).collect();
        let moved: Vec<f64> = same.iter().map(|x| x + 40.0).collect();
        let colours =
            |c: &str, n: usize| (0..n).map(|i| if i % 3 == 0 { c.to_string() } else { "red".to_string() }).collect();
        let reference = vec![
            ("stable".to_string(), Values::Numeric(same.clone(), 0)),
            ("moved".to_string(), Values::Numeric(same.clone(), 2)),
            ("colour".to_string(), Values::Text(colours("blue", 300), 0)),
        ];
        let current = vec![
            ("stable".to_string(), Values::Numeric(same, 0)),
            ("moved".to_string(), Values::Numeric(moved, 0)),
            ("colour".to_string(), Values::Text(colours("green", 300), 1)),
        ];
        let report = compare(reference, current, None, (0.5, 0.7), ["a.csv".into(), "b.csv".into()]).unwrap();
        let names: Vec<&str> = report.features.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["moved", "colour", "stable"]);
        let stable = report.features[2].drift.unwrap();
        assert_eq!((stable.ks, stable.ks_p), (Some(0.0), Some(1.0)));
        assert_eq!(report.features[0].missing, [2, 0]);
        assert!((report.features[0].drift.unwrap().wasserstein.unwrap() - 40.0).abs() < 1e-9);
        let page = html(&report);
        assert_eq!(page.matches("<svg").count(), 3);
        assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("<script"), "self-contained");
    }
}
