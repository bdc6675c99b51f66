//! Epoch numbers as event times, against numpy's `datetime64` casts (which floor toward the
//! past): every integer unit — seconds, milliseconds, microseconds, nanoseconds, configured or
//! chosen by magnitude — converts to epoch milliseconds exactly, never rounded into the future.

mod common;

use fathom_ingest::config::TimestampFormat;
use fathom_ingest::decode::parse_time;
use serde_json::json;

/// numpy's milliseconds for integers counted in `unit` (`s`, `ms`, `us`, `ns`).
fn numpy_ms(values: &[i64], unit: &str) -> Vec<i64> {
    let script = r#"
import sys, json
import numpy as np
values, unit = json.load(sys.stdin), sys.argv[1]
print(json.dumps(np.array(values, dtype=f"datetime64[{unit}]").astype("datetime64[ms]").astype(np.int64).tolist()))
"#;
    serde_json::from_value(common::python_json(script, &[unit], &serde_json::to_string(values).unwrap())).unwrap()
}

/// Random integers spread over `[-bound, bound]` on a log scale, plus the edges around zero
/// and around every multiple that rounding could get wrong.
fn draws(seed: u64, bound: i64) -> Vec<i64> {
    let mut state = seed;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out: Vec<i64> = (0..2_000)
        .map(|_| {
            let magnitude = (bound as f64).powf((next() % 10_000) as f64 / 10_000.0) as i64;
            let v = (next() as i64).rem_euclid(magnitude.max(1));
            if next() % 2 == 0 {
                v
            } else {
                -v
            }
        })
        .collect();
    out.extend([0, 1, -1, 999, -999, 1000, -1000, 999_999, -999_999, 1_000_001, -1_000_001, bound, -bound]);
    out
}

#[test]
fn every_integer_unit_converts_exactly_and_rounds_toward_the_past() {
    let units = [
        (TimestampFormat::Seconds, "s", 9_999_999_999_999i64), // ±10^16 ms is the accepted range
        (TimestampFormat::Millis, "ms", 9_999_999_999_999_999),
        // numpy's own casts overflow within ~2e16 of i64's ends (its NaT sits at i64::MIN)
        (TimestampFormat::Micros, "us", 9_200_000_000_000_000_000),
        (TimestampFormat::Nanos, "ns", 9_200_000_000_000_000_000),
    ];
    for (format, unit, bound) in units {
        let values = draws(0x9e37_79b9_7f4a_7c15 ^ bound as u64, bound);
        let expected = numpy_ms(&values, unit);
        for (v, want) in values.iter().zip(&expected) {
            assert_eq!(parse_time(&json!(v), format), Ok(*want), "{v} {unit}");
        }
    }
}

#[test]
fn epoch_numbers_by_magnitude_convert_exactly_in_the_unit_their_size_says() {
    // below 1e11 seconds, below 1e14 milliseconds, below 1e17 microseconds, else nanoseconds
    let mut groups: Vec<(&str, Vec<i64>)> = vec![("s", vec![]), ("ms", vec![]), ("us", vec![]), ("ns", vec![])];
    for v in draws(0x2545_f491_4f6c_dd1d, 9_200_000_000_000_000_000).into_iter().chain([
        99_999_999_999,
        100_000_000_000,
        99_999_999_999_999,
        100_000_000_000_000,
        99_999_999_999_999_999,
        100_000_000_000_000_000,
    ]) {
        let unit = match v.unsigned_abs() {
            a if a < 100_000_000_000 => 0,
            a if a < 100_000_000_000_000 => 1,
            a if a < 100_000_000_000_000_000 => 2,
            _ => 3,
        };
        groups[unit].1.push(v);
    }
    for (unit, values) in &groups {
        assert!(values.len() > 50, "{unit}: {} values", values.len());
        for (v, want) in values.iter().zip(numpy_ms(values, unit)) {
            assert_eq!(parse_time(&json!(v), TimestampFormat::Auto), Ok(want), "{v} read as {unit}");
        }
    }
}

#[test]
fn the_reported_nanosecond_times_keep_their_millisecond() {
    let t = 1_795_168_800_000i64; // 10:00:00.000Z
    for (ns, ms) in [
        (1_795_168_800_001_000_000i64, t + 1),
        (1_795_168_800_002_000_000, t + 2),
        (1_795_168_800_005_000_000, t + 5),
        (1_795_168_800_999_999_999, t + 999), // not 10:00:01.000: never into the future
    ] {
        assert_eq!(parse_time(&json!(ns), TimestampFormat::Auto), Ok(ms));
        assert_eq!(parse_time(&json!(ns), TimestampFormat::Nanos), Ok(ms));
    }
}
