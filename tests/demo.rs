//! The README's first command: `fathom demo` end to end on embedded defaults, checked by what it
//! prints, what it leaves on disk (read back by pyarrow) and, with `--serve`, what the API answers.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `name=value` in a printed feature line.
fn cell<'a>(line: &'a str, name: &str) -> &'a str {
    let start = line.find(&format!("{name}=")).unwrap_or_else(|| panic!("{name} in {line:?}")) + name.len() + 1;
    line[start..].split_whitespace().next().unwrap()
}

/// The printed feature line of `card` after `marker`.
fn card_line<'a>(out: &'a str, marker: &str, card: &str) -> &'a str {
    let from = out.find(marker).unwrap_or_else(|| panic!("{marker:?} in:\n{out}"));
    out[from..].lines().find(|l| l.trim_start().starts_with(&format!("{card}:"))).unwrap()
}

/// Rows of every Parquet file under `dir`, as pyarrow reads them.
fn pyarrow_rows(dir: &Path) -> u64 {
    let script = "import sys, pyarrow.dataset as ds; print(ds.dataset(sys.argv[1], format='parquet', partitioning='hive').count_rows())";
    let out = Command::new(common::python()).args(["-c", script, dir.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn the_demo_ingests_reacts_to_bursts_and_monitors_its_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fathom"))
        .args(["demo", "--cards", "60", "--history", "30000", "--rounds", "2"])
        .current_dir(dir.path())
        .env("FATHOM_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("fathom demo: 30000 card transactions over the last 2 hours for 60 cards"), "{stdout}");

    // one record in about a thousand is broken on purpose: each is in the dead-letter file
    let ingested = stdout.lines().find(|l| l.starts_with("ingested ")).unwrap();
    let dead: u64 = ingested.split('(').nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(ingested.starts_with("ingested 30000 events"), "{ingested}");
    assert!((5..=100).contains(&dead), "about 30 of 30000 dead-lettered: {ingested}");
    let letters = std::fs::read_to_string(dir.path().join("data/demo/dead_letters/transactions.dlq")).unwrap();
    assert_eq!(letters.lines().count() as u64, dead, "every dead letter is in the file");
    for letter in letters.lines() {
        let letter: Value = serde_json::from_str(letter).unwrap();
        assert!(letter["reason"].is_string() && letter["payload"].is_string(), "{letter}");
    }

    // the bursts: card-0042's 10-minute count holds at least each round's purchases, and grows
    let before: u64 = cell(card_line(&stdout, "features now", "card-0042"), "amount_count_10m").parse().unwrap();
    let round_1: u64 =
        cell(card_line(&stdout, "round 1: card-0042 makes 5 quick", "card-0042"), "amount_count_10m").parse().unwrap();
    let round_2: u64 =
        cell(card_line(&stdout, "round 2: card-0042 makes 10 quick", "card-0042"), "amount_count_10m").parse().unwrap();
    assert!(round_1 >= 5 && round_1 > before, "{before} → {round_1}");
    assert!(round_2 >= 15 && round_2 > round_1, "{round_1} → {round_2}");
    // a filtered count and a derived ratio of it, read with the window
    let line = card_line(&stdout, "round 2: card-0042 makes 10 quick", "card-0042");
    let online: u64 = cell(line, "online_count_10m").parse().unwrap();
    let share: f64 = cell(line, "online_share_10m").parse().unwrap();
    assert!(online <= round_2 && (share - online as f64 / round_2 as f64).abs() < 0.005, "{line}");

    // the model's windows: a status per tumbling window, accuracy once labelled
    let table = stdout.split("window end   predictions  drift score  status").nth(1).unwrap();
    let rows: Vec<&str> = table.lines().filter(|l| l.contains(" UTC ")).collect();
    assert!(rows.len() >= 10, "two hours of 10-minute windows: {table}");
    for row in &rows {
        let status = row.split_whitespace().nth(4).unwrap();
        assert!(["no_drift", "possible_drift", "drift_detected"].contains(&status), "{row}");
        let accuracy = row.split_whitespace().last().unwrap();
        assert!(accuracy == "-" || (0.0..=1.0).contains(&accuracy.parse::<f64>().unwrap()), "{row}");
    }

    // the offline store holds every accepted event, as pyarrow counts them
    let accepted = 30_000 - dead + 5 + 10;
    assert_eq!(pyarrow_rows(&dir.path().join("data/demo/offline/transactions")), accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_what_it_printed() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let log = dir.path().join("demo.out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fathom"))
        .args(["demo", "--cards", "50", "--history", "5000", "--rounds", "0", "--serve"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .current_dir(dir.path())
        .env("FATHOM_LOG", "warn")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let printed = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("serving on http://") {
            break text;
        }
        assert!(child.try_wait().unwrap().is_none(), "the demo exited: {text}");
        assert!(Instant::now() < deadline, "the demo did not start serving: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(printed.contains(&format!("serving on http://127.0.0.1:{port}")), "{printed}");
    let url = format!("http://127.0.0.1:{port}/v1/features/card_activity/card-0042");
    let body: Value = common::get_json(&url).await;
    let feature = |name: &str| body["features"].as_array().unwrap().iter().find(|f| f["name"] == name).unwrap().clone();
    // the day's maximum does not move between the print and the lookup
    let max = feature("amount_max_24h");
    assert_eq!(max["status"], "PRESENT", "{body}");
    let shown = cell(card_line(&printed, "features now", "card-0042"), "amount_max_24h");
    assert_eq!(format!("{:.2}", max["value"].as_f64().unwrap()), shown, "{body}");
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let status = child.wait().unwrap();
    assert!(status.success(), "a clean stop on SIGTERM: {status}");
}
