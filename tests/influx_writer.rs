//! The InfluxDB writer against the real InfluxDB (v1 API), through a proxy on 127.0.0.1 that
//! answers 503 while "InfluxDB is down" — the one failure the real server cannot produce on
//! demand. Nothing is lost: batches wait in memory, spill to disk beyond the limit, survive a
//! writer restart, and all arrive in order once InfluxDB answers again.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use common::{influxql, INFLUX};
use fathom_monitor::influx::{Field, InfluxConfig, Point, Writer};

#[derive(Clone)]
struct Proxy {
    down: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
}

async fn write(State(proxy): State<Proxy>, RawQuery(query): RawQuery, body: Bytes) -> StatusCode {
    if proxy.down.load(Ordering::SeqCst) {
        proxy.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let url = format!("{INFLUX}/write?{}", query.unwrap_or_default());
    let r = fathom_monitor::https::default_client().post(url).body(body).send().await.unwrap();
    StatusCode::from_u16(r.status().as_u16()).unwrap()
}

fn points(from: usize, n: usize) -> Vec<Point> {
    (from..from + n)
        .map(|i| Point {
            measurement: "fathom_feature_drift".into(),
            tags: vec![("model".into(), "fraud v1".into()), ("feature".into(), format!("f,{}", i % 5))],
            fields: vec![("tvd".into(), Field::Float(i as f64 / 1000.0)), ("seq".into(), Field::Int(i as i64))],
            time_ns: 1_700_000_000_000_000_000 + i as i64 * 1_000_000,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_while_influxdb_is_down_or_the_writer_restarts() {
    let db = common::unique("fathom_test").replace('-', "_");
    influxql(&db, &format!("CREATE DATABASE {db}")).await;
    let proxy = Proxy { down: Arc::new(AtomicBool::new(true)), refused: Arc::new(AtomicUsize::new(0)) };
    let app = Router::new().route("/write", post(write)).with_state(proxy.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let spill = tempfile::tempdir().unwrap();
    let config = InfluxConfig {
        url,
        database: Some(db.clone()),
        user: None,
        password: None,
        org: None,
        bucket: None,
        token: None,
        batch_size: 100,
        max_memory_points: 250,
        spill_dir: spill.path().to_path_buf(),
        tls: None,
    };

    // InfluxDB "down": 1,000 points queue up; beyond 250 in memory they go to disk
    let mut writer = Writer::new(config.clone()).unwrap();
    writer.push(&points(0, 1_000)).unwrap();
    for _ in 0..3 {
        assert!(writer.flush().await.is_err());
    }
    assert_eq!(writer.backlog(), 1_000);
    assert!(writer.backoff() >= std::time::Duration::from_millis(200), "backs off");
    let spilled = std::fs::read_dir(spill.path()).unwrap().count();
    assert_eq!(spilled, 8, "batches past the memory limit are on disk");

    // a checkpoint makes every queued point durable; the process dies; a new writer finds them
    writer.persist().unwrap();
    drop(writer);
    let mut writer = Writer::new(config.clone()).unwrap();
    assert_eq!(writer.backlog(), 1_000);
    writer.push(&points(1_000, 200)).unwrap();
    assert!(writer.flush().await.is_err());

    // InfluxDB back: everything arrives, spill files are gone
    proxy.down.store(false, Ordering::SeqCst);
    let written = writer.flush().await.unwrap();
    assert_eq!(written, 1_200);
    assert_eq!(writer.backlog(), 0);
    assert_eq!(std::fs::read_dir(spill.path()).unwrap().count(), 0);
    assert!(proxy.refused.load(Ordering::SeqCst) >= 4);
    let result = influxql(&db, "SELECT count(tvd), sum(seq) FROM fathom_feature_drift").await;
    let row = &result["results"][0]["series"][0]["values"][0];
    let expected_sum: i64 = (0..1_200).sum();
    assert_eq!((row[1].as_i64(), row[2].as_i64()), (Some(1_200), Some(expected_sum)), "{result}");
    let tags = influxql(&db, "SHOW TAG VALUES FROM fathom_feature_drift WITH KEY = \"model\"").await;
    assert_eq!(tags["results"][0]["series"][0]["values"][0][1], "fraud v1", "escaped tag round-trips");
    influxql(&db, &format!("DROP DATABASE {db}")).await;
}

const ADMIN_PASSWORD: &str = "influx-admin-4e2a";

/// Credentials against an InfluxDB that requires them: the right user and password (a header,
/// the password from the environment) write; a wrong password is refused with 401 and the batch
/// is kept — not dropped like a malformed one — so once the password is fixed it arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_authenticate_and_a_refused_login_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (http, rpc) = (common::free_port(), common::free_port());
    let d = |name: &str| dir.path().join(name).display().to_string();
    let child = std::process::Command::new("influxd")
        .args(["run", "-config", "/dev/null"])
        .env("INFLUXDB_REPORTING_DISABLED", "true")
        .env("INFLUXDB_BIND_ADDRESS", format!("127.0.0.1:{rpc}"))
        .env("INFLUXDB_HTTP_BIND_ADDRESS", format!("127.0.0.1:{http}"))
        .env("INFLUXDB_HTTP_AUTH_ENABLED", "true")
        .env("INFLUXDB_META_DIR", d("meta"))
        .env("INFLUXDB_DATA_DIR", d("data"))
        .env("INFLUXDB_DATA_WAL_DIR", d("wal"))
        .env("INFLUXDB_MONITOR_STORE_ENABLED", "false")
        .stdout(std::fs::File::create(d("influxd.log")).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("influxd (installed by the test command)");
    let _influx = common::Guarded(child);
    let base = format!("http://127.0.0.1:{http}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while fathom_monitor::https::default_client().get(format!("{base}/ping")).send().await.is_err() {
        assert!(std::time::Instant::now() < deadline, "influxd did not start");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // the first user may be created without credentials; everything after needs them
    let admin = Some(("admin", ADMIN_PASSWORD));
    let q = format!("CREATE USER admin WITH PASSWORD '{ADMIN_PASSWORD}' WITH ALL PRIVILEGES");
    assert!(common::influxql_as(&base, admin, "", &q).await.status().is_success());
    assert!(common::influxql_as(&base, admin, "", "CREATE DATABASE monitoring").await.status().is_success());
    let anonymous = fathom_monitor::https::default_client()
        .post(format!("{base}/write?db=monitoring"))
        .body("m f=1")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401, "the server does require credentials");

    std::env::set_var("FATHOM_TEST_INFLUX_ADMIN_PASSWORD", "not-the-password");
    let spill = tempfile::tempdir().unwrap();
    let config = InfluxConfig {
        url: base.clone(),
        database: Some("monitoring".into()),
        user: Some("admin".into()),
        password: Some("env:FATHOM_TEST_INFLUX_ADMIN_PASSWORD".into()),
        org: None,
        bucket: None,
        token: None,
        batch_size: 100,
        max_memory_points: 1_000,
        spill_dir: spill.path().to_path_buf(),
        tls: None,
    };
    let mut writer = Writer::new(config.clone()).unwrap();
    writer.push(&points(0, 250)).unwrap();
    let refused = writer.flush().await.unwrap_err().to_string();
    assert!(refused.contains("401"), "{refused}");
    assert!(!refused.contains("not-the-password"), "{refused}");
    assert_eq!(writer.backlog(), 250, "a refused login keeps the points");
    writer.persist().unwrap();
    drop(writer);

    // the password fixed, the process restarted: the kept points arrive, once
    std::env::set_var("FATHOM_TEST_INFLUX_ADMIN_PASSWORD", ADMIN_PASSWORD);
    let mut writer = Writer::new(config).unwrap();
    assert_eq!(writer.flush().await.unwrap(), 250);
    let q = "SELECT count(tvd) FROM fathom_feature_drift";
    let answer: serde_json::Value = common::influxql_as(&base, admin, "monitoring", q).await.json().await.unwrap();
    assert_eq!(answer["results"][0]["series"][0]["values"][0][1], 250, "{answer}");
}
