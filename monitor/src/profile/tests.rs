use std::sync::Arc;

use arrow_array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{Field, Schema};
use parquet::arrow::ArrowWriter;

use super::*;

fn training_set(dir: &Path) -> std::path::PathBuf {
    let schema = Arc::new(Schema::new(vec![
        Field::new("cards__amount_sum_1h", DataType::Int64, true),
        Field::new("customers.segment", DataType::Utf8, true),
        Field::new("score", DataType::Float64, true),
        Field::new("label", DataType::Int64, false),
    ]));
    // 21 amounts 0..=20, then one null; segments a×3, b×2, c×1, null
    let mut amounts: Vec<Option<i64>> = (0..=20).map(Some).collect();
    amounts.push(None);
    let segments: Vec<Option<&str>> =
        ["a", "b", "a", "c", "a", "b"].into_iter().map(Some).chain(std::iter::repeat_n(None, 16)).collect();
    let scores: Vec<Option<f64>> = (0..22).map(|i| if i == 3 { Some(f64::NAN) } else { Some(1.5) }).collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(amounts)),
            Arc::new(StringArray::from(segments)),
            Arc::new(Float64Array::from(scores)),
            Arc::new(Int64Array::from(vec![0; 22])),
        ],
    )
    .unwrap();
    let path = dir.join("train.parquet");
    let mut writer = ArrowWriter::try_new(File::create(&path).unwrap(), schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    path
}

#[test]
fn bins_counts_and_statistics_match_a_hand_computed_example() {
    let dir = tempfile::tempdir().unwrap();
    let path = training_set(dir.path());
    let features = ["cards.amount_sum_1h".to_string(), "customers.segment".to_string(), "score".to_string()];
    let profile = build("fraud", &features, &path, 2).unwrap();
    assert_eq!(profile.rows, 22);
    let FeatureProfile::Numeric(amount) = &profile.features["cards.amount_sum_1h"] else { panic!("numeric") };
    assert_eq!((amount.count, amount.missing, amount.min, amount.max), (21, 1, 0.0, 20.0));
    assert_eq!(amount.edges, (0..=20).map(f64::from).collect::<Vec<_>>(), "20 bins of width 1");
    // value i lands in inner bin i, 20 (= max) in the last one; nothing outside
    let mut expected = vec![0u64; BINS + 2];
    expected[1..=19].iter_mut().for_each(|c| *c = 1);
    expected[20] = 2;
    assert_eq!(amount.counts, expected);
    assert_eq!(amount.mean, 10.0);
    assert!((amount.std - 38.5f64.sqrt()).abs() < 1e-12);
    let q = |name: &str| amount.quantiles[name];
    assert_eq!((q("p01"), q("p25"), q("p50"), q("p99")), (0.0, 5.0, 10.0, 20.0), "nearest rank");
    assert_eq!(
        (amount.bin(-0.1), amount.bin(0.0), amount.bin(19.99), amount.bin(20.0), amount.bin(20.5)),
        (0, 1, 20, 20, 21)
    );
    assert_eq!(amount.mode(), 19.5, "the fullest bin, [19, 20]");

    let FeatureProfile::Categorical(segment) = &profile.features["customers.segment"] else { panic!("categorical") };
    assert_eq!(segment.top, vec![("a".to_string(), 3), ("b".to_string(), 2)]);
    assert_eq!((segment.other, segment.missing, segment.count), (1, 16, 6));
    assert_eq!(segment.mode(), Some("a"));

    let FeatureProfile::Numeric(score) = &profile.features["score"] else { panic!("numeric") };
    assert_eq!((score.count, score.missing), (21, 1), "NaN counts as missing");
    assert_eq!(score.counts[1], 21, "a constant feature fills the first bin");

    let file = dir.path().join("profiles/fraud.json");
    profile.save(&file).unwrap();
    assert_eq!(Profile::load(&file).unwrap(), profile);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\"format\": \"fathom.profile/1\"") && text.contains("\"kind\": \"numeric\""), "{text}");
}

#[test]
fn missing_columns_and_foreign_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = training_set(dir.path());
    let error = build("fraud", &["cards.nope".to_string()], &path, 10).unwrap_err().to_string();
    assert!(error.contains("no column for feature \"cards.nope\" (looked for cards.nope or cards__nope)"), "{error}");
    let other = dir.path().join("other.json");
    std::fs::write(&other, r#"{"format": "something/2"}"#).unwrap();
    assert!(Profile::load(&other).unwrap_err().to_string().contains("not a fathom.profile/1 profile"));
}
