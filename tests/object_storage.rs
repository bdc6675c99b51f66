//! The offline store in a bucket (`stores.offline.parquet.path: s3://…`), against a real
//! S3-compatible server started by the test on 127.0.0.1 (s3s-fs, installed by the test
//! command): `fathom serve` writes its Parquet files as objects, pyarrow reads them straight
//! from the bucket (its own S3 client) and DuckDB queries them through it; while the server is
//! away the stream keeps flowing with the rows spilled to local disk, and once it is back they
//! arrive once; a stop while it is away ends in `processing.stop_timeout` with the rows in the
//! spill directory, which the next start moves into the bucket; `fathom dataset` computes a
//! training set from the bucket (its entity rows an object too), and `fathom drift` compares two
//! objects with credentials from the environment.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, Fathom, Guarded};
use serde_json::{json, Value};

const ACCESS_KEY: &str = "fathom-test";
const SECRET_KEY: &str = "s3-sekrit-6d2a";

/// The port Azurite announces ("… successfully listens on http://127.0.0.1:PORT"), read from
/// its stdout; panics with everything it printed if it exits or stays silent past `wait`.
fn azurite_listening_port(child: &mut std::process::Child, wait: Duration) -> u16 {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    for pipe in [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let deadline = Instant::now() + wait;
    let mut printed = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(port) = line.split("listens on http://127.0.0.1:").nth(1) {
                    return port.trim().parse().unwrap_or_else(|_| panic!("azurite announced {line:?}"));
                }
                printed.push(line);
            }
            Err(_) => panic!("azurite did not start within {wait:?} ({:?}); it printed: {printed:?}", child.try_wait()),
        }
    }
}

/// s3s-fs serving `root` (a directory per bucket) on `port`.
fn s3_server(root: &Path, port: u16) -> Guarded {
    let binary = std::env::var("FATHOM_TEST_S3S_FS").unwrap_or_else(|_| "s3s-fs".into());
    let child = Command::new(&binary)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{binary}: {e} (scripts/test installs it)"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s3s-fs did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Guarded(child)
}

/// What pyarrow's S3 filesystem reads from `s3://fathom/offline/tx`: rows, distinct `_raw`
/// records and the sum of `amount`; and DuckDB's count, distinct count and sum over the same
/// objects.
fn read_with_pyarrow(port: u16) -> Value {
    let script = r#"
import sys, json
import pyarrow.dataset as ds, pyarrow.fs as fs
port, key, secret = sys.argv[1:4]
s3 = fs.S3FileSystem(access_key=key, secret_key=secret, endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1")
# the files by listing (s3s-fs answers HEAD of a "directory" key with 500 where S3 says 404,
# which pyarrow's dataset discovery does first)
listed = s3.get_file_info(fs.FileSelector("fathom/offline/tx", recursive=True, allow_not_found=True))
files = sorted(f.path for f in listed if f.path.endswith(".parquet"))
if not files:
    print(json.dumps({"rows": 0, "distinct": 0, "sum": 0, "duckdb": None}))
    sys.exit(0)
dataset = ds.dataset(files, filesystem=s3, format="parquet", partitioning="hive",
                     partition_base_dir="fathom/offline/tx")
table = dataset.to_table()
raw = table.column("_raw").to_pylist()
# DuckDB over the same bucket objects, through pyarrow's S3 filesystem (its own httpfs would
# download an extension first, which a machine limited to 127.0.0.1 cannot)
import duckdb
con = duckdb.connect()
con.register("tx", dataset)
duck = con.execute("select count(*), count(distinct _raw), sum(amount) from tx").fetchone()
print(json.dumps({"rows": table.num_rows, "distinct": len(set(raw)), "sum": sum(table.column("amount").to_pylist()),
                  "duckdb": [duck[0], duck[1], duck[2]]}))
"#;
    common::python_json(script, &[&port.to_string(), ACCESS_KEY, SECRET_KEY], "")
}

/// Runs `fathom args…` in `root` with `env` to completion, asserting it succeeds; returns its
/// stdout.
fn cli(root: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fathom"))
        .args(args)
        .current_dir(root)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "fathom {args:?}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// Card `card`'s `amount_count_1d` as the lookup API serves it.
async fn served_count(fathom: &Fathom, card: &str) -> Value {
    let features = common::get_json(fathom.url(&format!("/v1/features/cards/{card}"))).await;
    let count = features["features"].as_array().unwrap().iter().find(|f| f["name"] == "amount_count_1d");
    count.unwrap_or_else(|| panic!("{features}"))["value"].clone()
}

/// Each card's `[amount_sum_1d, amount_count_1d]` in `<root>/train.parquet`, read by pyarrow.
fn training_set(root: &Path) -> Value {
    let script = r#"
import sys, json, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1]).to_pydict()
print(json.dumps({c: [t["cards__amount_sum_1d"][i], t["cards__amount_count_1d"][i]] for i, c in enumerate(t["card_id"])}))
"#;
    common::python_json(script, &[&root.join("train.parquet").display().to_string()], "")
}

/// What a training set over cards c0, c1, c2 holds when they saw the amounts `0..n` (card
/// `i % 3`): the sum and count of each card's amounts.
fn expected_training_set(n: i64) -> Value {
    let cards = (0..3i64).map(|card| {
        let amounts: Vec<i64> = (0..n).filter(|i| i % 3 == card).collect();
        (format!("c{card}"), json!([amounts.iter().sum::<i64>() as f64, amounts.len()]))
    });
    Value::Object(cards.collect())
}

async fn push(fathom: &Fathom, from: i64, to: i64, now: i64) {
    let events: Vec<Value> =
        (from..to).map(|i| json!({"card_id": format!("c{}", i % 3), "ts": now - 60_000 + i, "amount": i})).collect();
    let r = fathom_monitor::https::default_client()
        .post(fathom.url("/v1/push/tx"))
        .json(&events)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// The tests' project — pushed card transactions summed per card and day, its offline store at
/// `path` with `options` (YAML flow mapping entries), the API on `port` — written to
/// `<root>/fathom.yaml`; returns that path.
fn write_project(root: &Path, path: &str, options: &str, port: u16) -> String {
    let yaml = format!(
        r#"
project: {project}
stores:
  online: {{ embedded: {{ snapshot: "{d}/online.snapshot" }} }}
  offline:
    parquet: {{ path: "{path}", options: {{ {options} }}, spill_dir: {d}/spill }}
  dead_letters: {{ path: {d}/dlq }}
processing: {{ checkpoint_interval: 200ms, stop_timeout: 3s }}
sources:
  tx: {{ key: card_id, timestamp: ts }}
entities:
  card: {{ key: card_id }}
feature_sets:
  cards:
    entity: card
    source: tx
    aggregations: [{{ column: amount, functions: [sum, count], windows: [1d], period: 1m }}]
feature_vectors:
  training: {{ features: [cards.amount_sum_1d, cards.amount_count_1d] }}
server: {{ listen: "127.0.0.1:{port}" }}
"#,
        project = common::unique("bucket"),
        d = root.display(),
    );
    let config = root.join("fathom.yaml");
    std::fs::write(&config, yaml).unwrap();
    config.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_store_lives_in_a_bucket_through_an_outage_and_feeds_training_sets() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let buckets = root.join("buckets");
    std::fs::create_dir_all(buckets.join("fathom")).unwrap();
    let s3_port = free_port();
    let mut s3 = Some(s3_server(&buckets, s3_port));
    let port = free_port();
    let options = format!(
        r#"endpoint: "http://127.0.0.1:{s3_port}", allow_http: "true", region: us-east-1, access_key_id: {ACCESS_KEY}, secret_access_key: "env:FATHOM_TEST_S3_SECRET""#
    );
    let config = write_project(root, "s3://fathom/offline", &options, port);
    let env = [("FATHOM_TEST_S3_SECRET", SECRET_KEY), ("FATHOM_LOG", "warn,fathom=info")];
    let mut fathom = Fathom::start_with(&["serve", "-c", &config], port, &root.join("fathom.log"), &env);
    fathom.wait_ready().await;
    let now = chrono::Utc::now().timestamp_millis();

    // 100 events become objects in the bucket
    push(&fathom, 0, 100, now).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while read_with_pyarrow(s3_port)["rows"] != 100 {
        assert!(Instant::now() < deadline, "{}", std::fs::read_to_string(&fathom.log).unwrap());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // the server goes away: the stream keeps flowing — 100 more events are taken and served,
    // their rows wait in the spill directory (Kafka offsets would wait too), readiness stays
    // ready with a warning saying why; back, the spilled rows reach the bucket once
    drop(s3.take());
    push(&fathom, 100, 150, now).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let warning = loop {
        let body = common::get_json(fathom.url("/readyz")).await;
        if let Some(warning) = body["warnings"]["offline_store"].as_str() {
            assert_eq!(body["status"], "ready", "lookups and the stream go on: {body}");
            break warning.to_string();
        }
        assert!(Instant::now() < deadline, "no warning: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let spill = root.join("spill");
    assert!(
        warning.contains("s3://fathom/offline/tx/") && warning.contains(&format!("wait in {}", spill.display())),
        "{warning}"
    );
    // on the old code the stream waited for the bucket here: this push never answered
    tokio::time::timeout(Duration::from_secs(20), push(&fathom, 150, 200, now))
        .await
        .expect("the stream keeps flowing while the bucket is away");
    assert_eq!(served_count(&fathom, "c0").await, json!((0..200).filter(|i| i % 3 == 0).count()), "served fresh");
    let script = r#"
import sys, json, os, pyarrow.dataset as ds
d = sys.argv[1] + "/tx"
if not os.path.isdir(d):
    print(json.dumps({"rows": 0, "sum": 0})); sys.exit(0)
t = ds.dataset(d, format="parquet", partitioning="hive").to_table()
print(json.dumps({"rows": t.num_rows, "sum": sum(t.column("amount").to_pylist()) if t.num_rows else 0}))
"#;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let spilled = common::python_json(script, &[&spill.display().to_string()], "");
        if spilled["rows"] == 100 {
            assert_eq!(spilled["sum"].as_f64(), Some((100..200).sum::<i64>() as f64), "{spilled}");
            break;
        }
        assert!(Instant::now() < deadline, "{spilled}: {}", std::fs::read_to_string(&fathom.log).unwrap());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // the gauge follows the spill file (set once the file is on disk): wait for it too
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = fathom_monitor::https::default_client().get(fathom.url("/metrics")).send().await.unwrap();
        let metrics = metrics.text().await.unwrap();
        if metrics.contains("fathom_offline_spill_rows 100") {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _s3 = s3_server(&buckets, s3_port);
    let deadline = Instant::now() + Duration::from_secs(60);
    let read = loop {
        let read = read_with_pyarrow(s3_port);
        if read["rows"] == 200 {
            break read;
        }
        assert!(read["rows"].as_u64().unwrap() < 200, "doubled: {read}");
        assert!(Instant::now() < deadline, "{read}: {}", std::fs::read_to_string(&fathom.log).unwrap());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(read["distinct"], 200, "each event once: {read}");
    assert_eq!(read["duckdb"], json!([200, 200, (0..200).sum::<i64>() as f64]), "DuckDB reads the same: {read}");
    assert_eq!(read["sum"].as_f64(), Some((0..200).sum::<i64>() as f64), "{read}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::get_json(fathom.url("/readyz")).await != json!({"status": "ready"}) {
        assert!(Instant::now() < deadline, "the warning stays: {}", common::get_json(fathom.url("/readyz")).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(common::python_json(script, &[&spill.display().to_string()], "")["rows"], 0, "the spill is empty");
    fathom.wait_ready().await;
    fathom.stop();

    // a stop while the store is away ends within processing.stop_timeout, the rows in the spill
    // directory and the error saying so; the next start moves them into the bucket
    let mut fathom = Fathom::start_with(&["serve", "-c", &config], port, &root.join("stopping.log"), &env);
    fathom.wait_ready().await;
    drop(_s3);
    push(&fathom, 200, 220, now).await;
    let stopping = Instant::now();
    Command::new("kill").args(["-TERM", &fathom.child.id().to_string()]).status().unwrap();
    let status = loop {
        if let Some(status) = fathom.child.try_wait().unwrap() {
            break status;
        }
        assert!(stopping.elapsed() < Duration::from_secs(60), "no exit 60 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = std::fs::read_to_string(&fathom.log).unwrap();
    assert!(
        !status.success() && stopping.elapsed() < Duration::from_secs(30),
        "{status} {:?}: {log}",
        stopping.elapsed()
    );
    assert!(
        log.contains("did not take writes within 3000 ms; 20 rows wait in")
            && log.contains(&format!("under {}", spill.display())),
        "{log}"
    );
    let spilled = common::python_json(script, &[&spill.display().to_string()], "");
    assert_eq!(
        (spilled["rows"].as_u64(), spilled["sum"].as_f64()),
        (Some(20), Some((200..220).sum::<i64>() as f64)),
        "{spilled}"
    );
    let _s3 = s3_server(&buckets, s3_port);
    let mut fathom = Fathom::start_with(&["serve", "-c", &config], port, &root.join("restarted.log"), &env);
    fathom.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let read = loop {
        let read = read_with_pyarrow(s3_port);
        if read["rows"] == 220 {
            break read;
        }
        assert!(Instant::now() < deadline, "{read}: {}", std::fs::read_to_string(&fathom.log).unwrap());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!((&read["distinct"], read["sum"].as_f64()), (&json!(220), Some((0..220).sum::<i64>() as f64)), "{read}");
    assert_eq!(common::python_json(script, &[&spill.display().to_string()], "")["rows"], 0, "the spill is empty");
    // the stop saved the embedded store's snapshot all the same: the 20 pushed events (which no
    // source replays) are online as they are offline
    assert_eq!(served_count(&fathom, "c2").await, json!((0..220).filter(|i| i % 3 == 2).count()));
    fathom.stop();
    let stdout = cli(root, &["consistency", "-c", &config, "--vector", "training", "--sample", "3"], &env);
    assert!(
        stdout.contains("cards.amount_sum_1d: 3 compared, 0 mismatches"),
        "online = offline, read from the bucket: {stdout}"
    );

    // nothing under a temporary or partial name in the bucket
    let mut stack = vec![buckets.join("fathom")];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                assert!(name.ends_with(".parquet") || name.starts_with('.'), "{}", path.display());
            }
        }
    }

    // a training set from the bucket: each card's sum and count as of a minute after the events
    let at = chrono::DateTime::from_timestamp_millis(now + 60_000).unwrap().to_rfc3339();
    // the entity rows are an object too (s3s-fs keeps objects as files: one written here is one it serves)
    std::fs::create_dir_all(buckets.join("fathom/inputs")).unwrap();
    std::fs::write(buckets.join("fathom/inputs/rows.csv"), format!("card_id,t\nc0,{at}\nc1,{at}\nc2,{at}\n")).unwrap();
    let args = ["dataset", "-c", &config, "--input", "s3://fathom/inputs/rows.csv", "--timestamp", "t"];
    cli(root, &[&args[..], &["--vector", "training", "--output", "train.parquet"]].concat(), &env);
    // `fathom drift` of two objects, credentials from the environment as AWS SDKs read them
    let parts: Vec<String> = std::fs::read_dir(buckets.join("fathom/offline/tx"))
        .unwrap()
        .flatten()
        .flat_map(|date| std::fs::read_dir(date.path()).unwrap().flatten())
        .map(|part| part.path().strip_prefix(buckets.join("fathom")).unwrap().display().to_string())
        .filter(|key| key.ends_with(".parquet"))
        .collect();
    let object = format!("s3://fathom/{}", parts[0]);
    let endpoint = format!("http://127.0.0.1:{s3_port}");
    let aws = [
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
    ];
    let args = ["drift", "--reference", &object, "--current", &object, "--columns", "amount"];
    cli(root, &[&args[..], &["--json", "drift.json", "--html", "drift.html"]].concat(), &aws);
    let report: Value = serde_json::from_slice(&std::fs::read(root.join("drift.json")).unwrap()).unwrap();
    assert_eq!(report["features"][0]["name"], "amount", "{report}");
    let (score, counts) = (&report["features"][0]["score"], &report["features"][0]["counts"]);
    assert!(score == 0.0 && counts[0] == counts[1] && counts[0].as_u64() > Some(0), "identical: {report}");
    assert_eq!(report["files"], json!([object, object]), "the locations as given: {report}");

    assert_eq!(training_set(root), expected_training_set(220));

    // `fathom replay` of a Parquet object in the bucket: its rows join the others there
    let script = r#"
import sys, pyarrow as pa, pyarrow.parquet as pq
now = int(sys.argv[2])
pq.write_table(pa.table({"card_id": [f"c{i % 3}" for i in range(220, 230)], "ts": [now - 60000 + i for i in range(220, 230)],
                         "amount": list(range(220, 230))}), sys.argv[1])
print("{}")
"#;
    let object = buckets.join("fathom/inputs/more.parquet");
    common::python_json(script, &[&object.display().to_string(), &now.to_string()], "");
    let stdout = cli(root, &["replay", "s3://fathom/inputs/more.parquet", "--source", "tx", "-c", &config], &env);
    assert!(stdout.contains("replayed 10 records from s3://fathom/inputs/more.parquet"), "{stdout}");
    let read = read_with_pyarrow(s3_port);
    assert_eq!((&read["rows"], read["sum"].as_f64()), (&json!(230), Some((0..230).sum::<i64>() as f64)), "{read}");
}

/// The offline store in Azure Blob Storage, against Azurite (Microsoft's emulator, from npm;
/// `scripts/test` installs it) reached with object_store's `use_emulator` (account
/// `devstoreaccount1`, its published key): 90 pushed events become blobs pyarrow's Azure
/// filesystem reads back, and `fathom dataset` computes a training set from them. (Google Cloud
/// Storage has no emulator that works here: object_store writes through GCS's XML API, which
/// fake-gcs-server does not implement — fsouza/fake-gcs-server#331.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_store_lives_in_azure_blob_storage() {
    const KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("azurite")).unwrap();
    let binary =
        std::env::var("FATHOM_TEST_AZURITE").expect("FATHOM_TEST_AZURITE: azurite-blob (scripts/test installs it)");
    // Port 0: Azurite binds a free port itself and announces it, so no other test can take it
    // between our choice and its bind. Its output is kept for the failure message.
    let mut child = Command::new(&binary)
        .args(["--blobHost", "127.0.0.1", "--blobPort", "0", "--silent", "--skipApiVersionCheck"])
        .arg("--location")
        .arg(root.join("azurite"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{binary}: {e}"));
    let azurite_port = azurite_listening_port(&mut child, Duration::from_secs(60));
    let _azurite = Guarded(child);
    let authority = format!("127.0.0.1:{azurite_port}");
    let azure = format!(
        "fs.AzureFileSystem(account_name='devstoreaccount1', account_key='{KEY}', blob_storage_authority='{authority}', \
         blob_storage_scheme='http', dfs_storage_authority='{authority}', dfs_storage_scheme='http')"
    );
    common::python_json(&format!("import pyarrow.fs as fs\n{azure}.create_dir('fathom')\nprint('{{}}')"), &[], "");

    let port = free_port();
    let config = write_project(root, "az://fathom/offline", r#"use_emulator: "true""#, port);
    let url = format!("http://{authority}");
    let env = [("AZURITE_BLOB_STORAGE_URL", url.as_str()), ("FATHOM_LOG", "warn,fathom=info")];
    let mut fathom = Fathom::start_with(&["serve", "-c", &config], port, &root.join("fathom.log"), &env);
    fathom.wait_ready().await;
    let now = chrono::Utc::now().timestamp_millis();
    push(&fathom, 0, 90, now).await;
    let script = format!(
        r#"
import json, pyarrow.fs as fs, pyarrow.dataset as ds
store = {azure}
files = sorted(f.path for f in store.get_file_info(fs.FileSelector("fathom/offline/tx", recursive=True, allow_not_found=True))
               if f.path.endswith(".parquet"))
t = ds.dataset(files, filesystem=store, format="parquet", partitioning="hive", partition_base_dir="fathom/offline/tx").to_table() if files else None
print(json.dumps({{"rows": t.num_rows if t else 0, "sum": sum(t.column("amount").to_pylist()) if t else 0}}))
"#
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let read = common::python_json(&script, &[], "");
        if read["rows"] == 90 {
            assert_eq!(read["sum"].as_f64(), Some((0..90).sum::<i64>() as f64), "{read}");
            break;
        }
        assert!(Instant::now() < deadline, "{read}: {}", std::fs::read_to_string(&fathom.log).unwrap());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    fathom.stop();

    let at = chrono::DateTime::from_timestamp_millis(now + 60_000).unwrap().to_rfc3339();
    std::fs::write(root.join("rows.csv"), format!("card_id,t\nc0,{at}\nc1,{at}\nc2,{at}\n")).unwrap();
    let args = ["dataset", "-c", &config, "--input", "rows.csv", "--timestamp", "t", "--vector", "training"];
    cli(root, &[&args[..], &["--output", "train.parquet"]].concat(), &env);
    assert_eq!(training_set(root), expected_training_set(90));
}
