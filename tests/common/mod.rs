//! Helpers shared by the integration tests: the real services (addresses from the test command's
//! environment, 127.0.0.1 defaults), unique names, and the `fathom` binary as a child process.
#![allow(dead_code, unreachable_pub)]

pub mod tls;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

pub fn kafka() -> String {
    std::env::var("FATHOM_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn redis_url() -> String {
    std::env::var("FATHOM_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn redis_cluster() -> Vec<String> {
    std::env::var("FATHOM_TEST_REDIS_CLUSTER")
        .unwrap_or_else(|_| "redis://127.0.0.1:7000,redis://127.0.0.1:7001,redis://127.0.0.1:7002".into())
        .split(',')
        .map(String::from)
        .collect()
}

pub fn python() -> String {
    std::env::var("FATHOM_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub async fn create_topics(names: &[&str], partitions: i32) {
    create_topics_at(&kafka(), names, partitions).await
}

/// [`create_topics`] on the broker at `bootstrap`.
pub async fn create_topics_at(bootstrap: &str, names: &[&str], partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("admin client");
    let topics: Vec<NewTopic> =
        names.iter().map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1))).collect();
    let results = admin.create_topics(&topics, &AdminOptions::new()).await.expect("create topics");
    for r in results {
        r.expect("topic created");
    }
}

/// Produces (key, payload) records; returns the highest offset per partition.
pub async fn produce(topic: &str, records: &[(String, Vec<u8>)]) -> std::collections::BTreeMap<i32, i64> {
    produce_at(&kafka(), topic, records).await
}

/// [`produce`] to the broker at `bootstrap`.
pub async fn produce_at(
    bootstrap: &str,
    topic: &str,
    records: &[(String, Vec<u8>)],
) -> std::collections::BTreeMap<i32, i64> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let mut last = std::collections::BTreeMap::new();
    for chunk in records.chunks(5_000) {
        let mut pending = Vec::with_capacity(chunk.len());
        for (key, payload) in chunk {
            let record = FutureRecord::to(topic).key(key.as_str()).payload(payload.as_slice());
            pending.push(producer.send_result(record).map_err(|(e, _)| e).expect("queued"));
        }
        for delivery in pending {
            let delivered = delivery.await.expect("not cancelled").map_err(|(e, _)| e).expect("delivered");
            let e = last.entry(delivered.partition).or_insert(-1);
            *e = (*e).max(delivered.offset);
        }
    }
    last
}

/// The `fathom.*` headers of the first `n` records on a dead-letter topic.
/// Waits (up to 90 s) until the pipeline's applied offsets in Redis reach `last` (highest
/// offset per partition, as [`produce`] returns it); on timeout, fails with the log.
pub async fn wait_applied(group: &str, topic: &str, last: &std::collections::BTreeMap<i32, i64>, log: &Path) {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut done = true;
        for (partition, offset) in last {
            let key = fathom_featurestore::online::offsets_key(group, topic, *partition);
            let applied: Option<i64> = redis::cmd("GET").arg(key).query_async(&mut con).await.unwrap();
            done &= applied >= Some(*offset);
        }
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "{topic} not applied in time: {}", std::fs::read_to_string(log).unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn dead_letter_headers(topic: &str, n: usize) -> Vec<std::collections::BTreeMap<String, String>> {
    consume(topic, n).await.into_iter().map(|(headers, _, _)| headers).collect()
}

/// The first `n` records of `topic` (waiting up to 30 s for each): headers, key, payload.
pub async fn consume(topic: &str, n: usize) -> Vec<(std::collections::BTreeMap<String, String>, Vec<u8>, Vec<u8>)> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("{topic}: only {} of {n} records arrived", out.len()))
            .unwrap();
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).to_string()))
                    .collect()
            })
            .unwrap_or_default();
        out.push((headers, m.key().unwrap_or_default().to_vec(), m.payload().unwrap_or_default().to_vec()));
    }
    out
}

/// A server a test started for itself (a Redis, a broker, an InfluxDB); killed on drop.
pub struct Guarded(pub Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET `url` and its JSON body (any status).
pub async fn get_json(url: impl reqwest::IntoUrl) -> serde_json::Value {
    let response = fathom_monitor::https::default_client().get(url).send().await.unwrap();
    response.json().await.unwrap()
}

/// Runs `fathom args…` in `dir` to completion: (success, stdout and stderr).
pub fn fathom_cli(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fathom"))
        .args(args)
        .current_dir(dir)
        .env("FATHOM_LOG", "warn")
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A running `fathom` process; killed on drop.
pub struct Fathom {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Fathom {
    pub fn start(args: &[&str], port: u16, log: &Path) -> Fathom {
        Fathom::start_with(args, port, log, &[("FATHOM_LOG", "warn,fathom=info")])
    }

    /// [`Fathom::start`] with these environment variables.
    pub fn start_with(args: &[&str], port: u16, log: &Path, env: &[(&str, &str)]) -> Fathom {
        let file = std::fs::File::create(log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_fathom"))
            .args(args)
            .envs(env.iter().copied())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn fathom");
        Fathom { child, port, log: log.to_path_buf() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self) {
        let client = fathom_monitor::https::default_client();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("fathom exited with {status}: {}", std::fs::read_to_string(&self.log).unwrap_or_default());
            }
            if let Ok(r) = client.get(self.url("/readyz")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("fathom not ready: {}", std::fs::read_to_string(&self.log).unwrap_or_default());
    }

    pub fn sigkill(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let status = self.child.wait().expect("wait");
        assert!(
            status.success(),
            "fathom exited with {status}: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for Fathom {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const INFLUX: &str = "http://127.0.0.1:8086";

/// Runs an InfluxQL statement against the real InfluxDB (v1 API); returns its JSON answer.
pub async fn influxql(db: &str, q: &str) -> serde_json::Value {
    influxql_at(INFLUX, db, q).await
}

/// [`influxql`] against the InfluxDB at `base`.
pub async fn influxql_at(base: &str, db: &str, q: &str) -> serde_json::Value {
    influxql_as(base, None, db, q).await.json().await.unwrap()
}

/// [`influxql_at`] as `user` (name, password), answering the raw response.
pub async fn influxql_as(base: &str, user: Option<(&str, &str)>, db: &str, q: &str) -> reqwest::Response {
    let encode = |t: &str| {
        t.bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect::<String>()
    };
    let mut request = fathom_monitor::https::default_client()
        .post(format!("{base}/query"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("db={}&q={}", encode(db), encode(q)));
    if let Some((name, password)) = user {
        request = request.basic_auth(name, Some(password));
    }
    request.send().await.unwrap()
}

/// The rows of the first series of an InfluxQL answer as column name → value maps.
pub fn influx_rows(answer: &serde_json::Value) -> Vec<std::collections::BTreeMap<String, serde_json::Value>> {
    let mut out = Vec::new();
    for series in answer["results"][0]["series"].as_array().into_iter().flatten() {
        let columns: Vec<String> =
            series["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
        for values in series["values"].as_array().unwrap() {
            let mut row: std::collections::BTreeMap<String, serde_json::Value> =
                columns.iter().cloned().zip(values.as_array().unwrap().iter().cloned()).collect();
            if let Some(tags) = series["tags"].as_object() {
                for (k, v) in tags {
                    row.insert(k.clone(), v.clone());
                }
            }
            out.push(row);
        }
    }
    out
}

/// Runs `script` with the test venv's Python (`python -c script args…`), `stdin` on its standard
/// input; its standard output parsed as JSON. Fails the test with Python's stderr on an error.
pub fn python_json(script: &str, args: &[&str], stdin: &str) -> serde_json::Value {
    use std::io::Write as _;
    let mut child = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// A deterministic pseudo-random sequence (xorshift64), so that a failing property test replays.
pub struct Xorshift(pub u64);

impl Xorshift {
    /// The next raw state.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A float in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// A draw from N(mean, sd²) (Box–Muller).
    pub fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        mean + sd * (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// A size from 1 to 10^6, log-uniform.
    pub fn size(&mut self) -> usize {
        10f64.powf(self.uniform() * 6.0).floor().max(1.0) as usize
    }
}
