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
            let close = (got - want).abs() <= 1e-9 * want.abs();
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

/// The tokens pandas' `read_csv` reads as missing by default, and look-alikes it keeps as text.
const TOKENS: [&str; 24] = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
    "NULL", "NaN", "None", "n/a", "nan", "null", "-", "n.a.", "missing", "NONE", "Null",
];

#[test]
fn csv_columns_are_typed_and_counted_as_pandas_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table.csv");
    let mut rng = common::Xorshift(0x2545_f491_4f6c_dd1d);
    let mut next = |n: u64| rng.below(n);
    // 60 columns of 200 rows: numbers with a random share of cells replaced by random tokens
    // (one token kind per column, so some columns only hold pandas' missing tokens and stay
    // numeric while others hold a look-alike and become text)
    let (columns, rows) = (60, 200);
    let mut table: Vec<Vec<String>> = Vec::new();
    for c in 0..columns {
        let token = TOKENS[next(TOKENS.len() as u64) as usize];
        let share = next(4); // 0: none, 3: three cells in four
        let integer = c % 3 == 0;
        table.push(
            (0..rows)
                .map(|_| {
                    if next(4) < share {
                        token.to_string()
                    } else if integer {
                        (next(2000) as i64 - 1000).to_string()
                    } else {
                        format!("{:.3}", (next(1_000_000) as f64 - 500_000.0) / 997.0)
                    }
                })
                .collect(),
        );
    }
    let mut csv = (0..columns).map(|c| format!("c{c}")).collect::<Vec<_>>().join(",") + "\n";
    for r in 0..rows {
        csv += &table.iter().map(|column| format!("\"{}\"", column[r])).collect::<Vec<_>>().join(",");
        csv += "\n";
    }
    std::fs::write(&path, csv).unwrap();
    let expected = common::python_json(
        r#"
import sys, json
import pandas as pd
df = pd.read_csv(sys.argv[1])
print(json.dumps({c: {"numeric": bool(pd.api.types.is_numeric_dtype(df[c])), "missing": int(df[c].isna().sum()),
                      "sum": float(df[c].sum()) if pd.api.types.is_numeric_dtype(df[c]) else None} for c in df.columns}))
"#,
        &[path.to_str().unwrap()],
        "",
    );
    let got = fathom_monitor::report::read_table(&path, None).unwrap();
    assert_eq!(got.len(), columns);
    let (mut numeric, mut text) = (0, 0);
    for (name, values) in &got {
        let want = &expected[name];
        let (is_numeric, missing, sum) = match values {
            fathom_monitor::report::Values::Numeric(v, m) => (true, *m, Some(v.iter().sum::<f64>())),
            fathom_monitor::report::Values::Text(_, m) => (false, *m, None),
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(is_numeric, want["numeric"].as_bool().unwrap(), "{name}: numeric as pandas says ({want})");
        assert_eq!(missing, want["missing"].as_u64().unwrap(), "{name}: missing cells as pandas counts them");
        if let (Some(a), Some(b)) = (sum, want["sum"].as_f64()) {
            assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{name}: sum {a} vs pandas {b}");
        }
        numeric += usize::from(is_numeric);
        text += usize::from(!is_numeric);
    }
    assert!(numeric >= 10 && text >= 5, "both kinds drawn: {numeric} numeric, {text} text");
}

#[test]
fn a_numeric_column_with_na_cells_is_compared_as_numbers() {
    // the reported case: a half-standard-deviation shift in a column whose gaps are written NA
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let expected = common::python_json(
        r#"
import sys, json
import numpy as np, pandas as pd
from scipy.stats import ks_2samp
rng = np.random.default_rng(3)
out = {}
for name, shift in [("reference", 0.0), ("current", 0.5)]:
    x = rng.normal(shift, 1.0, 2000).round(4).astype(object)
    x[rng.choice(2000, 150, replace=False)] = "NA"
    pd.DataFrame({"amount": x}).to_csv(f"{sys.argv[1]}/{name}.csv", index=False)
ref, cur = (pd.read_csv(f"{sys.argv[1]}/{n}.csv")["amount"] for n in ["reference", "current"])
r = ks_2samp(ref.dropna(), cur.dropna())
print(json.dumps({"ks": r.statistic, "ks_p": r.pvalue, "missing": [int(ref.isna().sum()), int(cur.isna().sum())]}))
"#,
        &[d],
        "",
    );
    let report = fathom_monitor::report::run(
        &dir.path().join("reference.csv"),
        &dir.path().join("current.csv"),
        None,
        None,
        (0.5, 0.7),
    )
    .unwrap();
    let amount = &report.features[0];
    assert_eq!(amount.kind, "numeric");
    assert_eq!(amount.missing.to_vec(), serde_json::from_value::<Vec<u64>>(expected["missing"].clone()).unwrap());
    let drift = amount.drift.unwrap();
    assert!((drift.ks.unwrap() - expected["ks"].as_f64().unwrap()).abs() < 1e-12);
    let (p, want) = (drift.ks_p.unwrap(), expected["ks_p"].as_f64().unwrap());
    assert!((p - want).abs() <= 1e-9 * want, "KS p {p:e} vs scipy {want:e}");
    assert!(p < 1e-6, "the shift is found");
}

#[test]
fn every_parquet_column_type_is_compared_or_listed_as_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // pyarrow writes both tables with one column per type, and says what each column's values
    // are as numbers (decimals at their value, times in seconds since the epoch) or as text
    let expected = common::python_json(
        r#"
import sys, json, datetime, decimal
import numpy as np, pyarrow as pa, pyarrow.parquet as pq, pandas as pd
from scipy.stats import ks_2samp
rng = np.random.default_rng(11)
def table(n, shift):
    ints = rng.integers(0, 100, n) + shift
    mask = rng.random(n) < 0.1
    t0 = 1_795_168_800
    cols = {
        "i8": pa.array(ints - 50, pa.int8(), mask=mask), "i16": pa.array(ints * 300, pa.int16(), mask=mask),
        "i32": pa.array(ints, pa.int32()), "i64": pa.array(ints, pa.int64()),
        "u8": pa.array(ints, pa.uint8()), "u16": pa.array(ints * 600, pa.uint16()),
        "u32": pa.array(ints, pa.uint32()), "u64": pa.array(ints, pa.uint64(), mask=mask),
        "f16": pa.array((ints / 8).astype(np.float16), pa.float16()), "f32": pa.array(ints / 3, pa.float32()),
        "f64": pa.array(ints / 7, pa.float64(), mask=mask),
        "dec128": pa.array([decimal.Decimal(int(i)).scaleb(-2) for i in ints], pa.decimal128(10, 2)),
        "dec256": pa.array([decimal.Decimal(int(i) * 1000 + 1).scaleb(-3) for i in ints], pa.decimal256(40, 3)),
        "category": pa.array(pd.Categorical([f"c{i % 7}" for i in ints])),
        "large": pa.array([f"l{i % 5}" for i in ints], pa.large_string()),
        "view": pa.array([f"v{i % 4}" for i in ints], pa.string_view()),
        "flag": pa.array(ints % 3 == 0, pa.bool_()),
        "day": pa.array([datetime.date(2026, 1, 1) + datetime.timedelta(days=int(i)) for i in ints], pa.date32()),
        "ts_ms": pa.array((t0 + ints * 60) * 1000, pa.timestamp("ms", tz="UTC")),
        "ts_ns": pa.array((t0 + ints * 60) * 10**9, pa.timestamp("ns")),
        "tags": pa.array([[int(i)] for i in ints], pa.list_(pa.int64())),
        "blob": pa.array([bytes([int(i) % 256]) for i in ints], pa.binary()),
    }
    return pa.table(cols)
ref, cur = table(800, 0), table(700, 10)
pq.write_table(ref, f"{sys.argv[1]}/reference.parquet")
pq.write_table(cur, f"{sys.argv[1]}/current.parquet")
def numbers(col):
    t = col.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        unit = {"s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[t.unit] if pa.types.is_timestamp(t) else (86400 if t == pa.date32() else 1e-3)
        ints = col.cast(pa.int32()).cast(pa.int64()) if t == pa.date32() else col.cast(pa.int64())
        return np.array([np.nan if v is None else v for v in ints.to_pylist()], dtype=float) * unit
    return np.array(col.cast(pa.float64()).to_pylist(), dtype=float)
out = {}
for name in ref.column_names:
    a, b = ref[name].combine_chunks(), cur[name].combine_chunks()
    t = a.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_temporal(t):
        x, y = numbers(a), numbers(b)
        x, y = x[~np.isnan(x)], y[~np.isnan(y)]
        r = ks_2samp(x, y)
        out[name] = {"kind": "numeric", "counts": [len(x), len(y)], "missing": [a.null_count, b.null_count], "ks": r.statistic}
    elif pa.types.is_list(t) or pa.types.is_binary(t):
        out[name] = {"kind": "skipped"}
    else:
        out[name] = {"kind": "categorical", "counts": [len(a) - a.null_count, len(b) - b.null_count], "missing": [a.null_count, b.null_count]}
print(json.dumps(out))
"#,
        &[d],
        "",
    );
    let (reference, current) = (dir.path().join("reference.parquet"), dir.path().join("current.parquet"));
    let report = fathom_monitor::report::run(&reference, &current, None, None, (0.5, 0.7)).unwrap();
    let mut compared = Vec::new();
    for (name, want) in expected.as_object().unwrap() {
        if want["kind"] == "skipped" {
            let skipped = report.skipped.iter().find(|s| s.name == *name);
            assert!(
                skipped.is_some_and(|s| s.reason.contains("neither numeric nor text")),
                "{name}: {:?}",
                report.skipped
            );
            continue;
        }
        let f = report.features.iter().find(|f| f.name == *name).unwrap_or_else(|| panic!("{name} is in the report"));
        assert_eq!(f.kind, want["kind"].as_str().unwrap(), "{name}");
        assert_eq!(serde_json::to_value(f.counts).unwrap(), want["counts"], "{name}: values");
        assert_eq!(serde_json::to_value(f.missing).unwrap(), want["missing"], "{name}: missing");
        if let Some(ks) = want["ks"].as_f64() {
            let got = f.drift.unwrap().ks.unwrap();
            assert!((got - ks).abs() < 1e-12, "{name}: KS {got} vs scipy {ks}");
        }
        compared.push(name.clone());
    }
    assert_eq!(compared.len(), 20, "{compared:?}");
    // `fathom profile` accepts the same columns, and refuses the skipped ones with the reason
    let profile = fathom_monitor::profile::build("m", &compared, &reference, 20).unwrap();
    assert_eq!(profile.features.len(), compared.len());
    let refused = fathom_monitor::profile::build("m", &["tags".to_string()], &reference, 20).unwrap_err();
    assert!(refused.to_string().contains("tags"), "{refused}");
}

#[test]
fn a_current_table_without_values_says_no_data_and_an_empty_one_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    // a byte order mark (Excel's "CSV UTF-8") is not part of the first column's name
    let reference = write("reference.csv", "\u{feff}amount,country\n1.5,DE\n2.5,FR\n3.5,DE\n");
    let current = write("current.csv", "amount,country\n,DE\nNA,FR\n");
    let report = fathom_monitor::report::run(&reference, &current, None, None, (0.5, 0.7)).unwrap();
    let amount = report.features.iter().find(|f| f.name == "amount").unwrap();
    assert_eq!((amount.drift, amount.score), (None, None), "no statistics without values");
    assert_eq!(fathom_monitor::window::status_name(amount.status), "no_data");
    assert_eq!(amount.missing, [0, 2]);
    let country = report.features.iter().find(|f| f.name == "country").unwrap();
    assert_eq!(report.score, country.score, "the model's score leaves the column without data out");

    let header_only = write("header.csv", "amount,country\n");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_fathom"))
        .args(["drift", "--reference", reference.to_str().unwrap(), "--current", header_only.to_str().unwrap()])
        .args([
            "--json",
            &format!("{}/d.json", dir.path().display()),
            "--html",
            &format!("{}/d.html", dir.path().display()),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "a table without rows fails");
    assert!(stderr.contains("header.csv") && stderr.contains("no rows"), "{stderr}");
}
