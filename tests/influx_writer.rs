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
    let r = reqwest::Client::new().post(url).body(body).send().await.unwrap();
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
