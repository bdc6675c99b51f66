//! Transport security: the API over HTTPS (rustls) when `server.tls` is set — a client trusting
//! the certificate gets answers, one that does not is refused, plain HTTP gets nothing — and the
//! online store behind Redis `requirepass` (its password only in the environment, never logged)
//! and behind Redis TLS (`rediss://`, trusting a private CA from `stores.online.redis.ca`), as a
//! Redis 6+ ACL user over TLS to one server and to a three-node cluster (a wrong password or an
//! untrusted certificate: alive, not ready, the reason in `/readyz`, started once Redis accepts), and
//! Kafka sources behind SASL: SCRAM-SHA-512 over TLS (`SASL_SSL`), SCRAM-SHA-256 without
//! (`SASL_PLAINTEXT`).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, Fathom, Guarded};

/// A private CA and a server certificate for 127.0.0.1 it signed, as (ca, cert, key) paths.
fn certificate(dir: &Path) -> (String, String, String) {
    let c = common::tls::certificates(dir);
    (c.ca, c.cert, c.key)
}

/// curl's exit code, HTTP status and body.
fn curl(args: &[&str]) -> (i32, String) {
    let out = Command::new("curl").args(["-sS", "--max-time", "5"]).args(args).output().expect("curl");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).to_string())
}

fn project(dir: &Path, port: u16, online: &str, server: &str) -> String {
    let d = dir.display();
    let yaml = format!(
        r#"
project: {project}
stores:
  online: {online}
  offline: {{ parquet: {{ path: {d}/offline }} }}
  dead_letters: {{ path: {d}/dlq }}
sources:
  tx: {{ key: card_id, timestamp: ts }}
entities:
  card: {{ key: card_id }}
feature_sets:
  cards:
    entity: card
    source: tx
    aggregations: [{{ column: amount, functions: [sum], windows: [1h], period: 1m }}]
server: {{ listen: "127.0.0.1:{port}"{server} }}
"#,
        project = common::unique("security"),
    );
    let path = dir.join("fathom.yaml");
    std::fs::write(&path, yaml).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_speaks_https_only_when_tls_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificate(dir.path());
    let port = free_port();
    let config = project(dir.path(), port, "{ embedded: {} }", &format!(", tls: {{ cert: {cert}, key: {key} }}"));
    let fathom = Fathom::start(&["serve", "-c", &config], port, &dir.path().join("fathom.log"));
    let https = |path: &str| format!("https://127.0.0.1:{port}{path}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while curl(&["--cacert", &ca, &https("/readyz")]).0 != 0 {
        assert!(Instant::now() < deadline, "no HTTPS answer: {}", std::fs::read_to_string(&fathom.log).unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    let now = chrono::Utc::now().timestamp_millis();
    let event =
        format!(r#"[{{"card_id": "c1", "ts": {now}, "amount": 2.5}}, {{"card_id": "c1", "ts": {now}, "amount": 4}}]"#);
    let (code, body) =
        curl(&["--cacert", &ca, "-H", "content-type: application/json", "-d", &event, &https("/v1/push/tx")]);
    assert_eq!((code, body.as_str()), (0, r#"{"accepted":2,"dead_lettered":0}"#));
    let (code, body) = curl(&["--cacert", &ca, &https("/v1/features/cards/c1")]);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{code} {body}: {e}"));
    assert_eq!(body["features"][0]["value"], 6.5, "{body}");
    // a client that does not trust the certificate stops at verification (curl: 60)
    assert_eq!(curl(&[&https("/readyz")]).0, 60);
    // plain HTTP on the HTTPS port gets no HTTP answer
    let (code, body) = curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("http://127.0.0.1:{port}/readyz")]);
    assert!(code != 0 && body == "000", "plain HTTP answered: curl {code}, status {body}");
    drop(fathom);

    // a key that does not exist: the process refuses to start, naming the field
    let port = free_port();
    let config =
        project(dir.path(), port, "{ embedded: {} }", &format!(", tls: {{ cert: {cert}, key: {cert}.missing }}"));
    let out = Command::new(env!("CARGO_BIN_EXE_fathom")).args(["serve", "-c", &config]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("server.tls.key: reading"), "{stderr}");
}

/// Pushes one event for `card` over HTTP and answers the card's features.
async fn push_and_read(fathom: &Fathom, card: &str, amount: f64) -> serde_json::Value {
    let now = chrono::Utc::now().timestamp_millis();
    let client = fathom_monitor::https::default_client();
    let event = serde_json::json!({"card_id": card, "ts": now, "amount": amount});
    let pushed = client.post(fathom.url("/v1/push/tx")).body(event.to_string()).send().await.unwrap();
    assert_eq!(pushed.status(), 200);
    client.get(fathom.url(&format!("/v1/features/cards/{card}"))).send().await.unwrap().json().await.unwrap()
}

const REDIS_PASSWORD: &str = "redis-sekrit-41d7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_online_store_authenticates_to_redis_with_a_password_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let redis_port = free_port();
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &redis_port.to_string(), "--save", "", "--appendonly", "no"])
        .args(["--requirepass", REDIS_PASSWORD])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    let _redis = Guarded(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", redis_port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let online = r#"{ redis: { url: "env:FATHOM_TEST_REDIS_URL" } }"#;
    let url = format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_port}");
    let port = free_port();
    let config = project(dir.path(), port, online, "");
    let env = [("FATHOM_TEST_REDIS_URL", url.as_str()), ("FATHOM_LOG", "debug")];
    let mut fathom = Fathom::start_with(&["serve", "-c", &config], port, &dir.path().join("fathom.log"), &env);
    fathom.wait_ready().await;
    let body = push_and_read(&fathom, "c7", 3.0).await;
    assert_eq!(body["features"][0]["value"], 3.0, "{body}");
    // the value is in the guarded Redis
    let mut con = redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*c7*").query_async(&mut con).await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    fathom.stop();

    // a wrong password: the process stays up and not ready, says why without the URL, and starts
    // once Redis accepts the password (here: the server's password changed to it)
    let wrong = format!("redis://:not-{REDIS_PASSWORD}@127.0.0.1:{redis_port}");
    let env = [("FATHOM_TEST_REDIS_URL", wrong.as_str()), ("FATHOM_LOG", "debug")];
    let log = dir.path().join("wrong.log");
    let mut refused = Fathom::start_with(&["serve", "-c", &config], port, &log, &env);
    let why = not_ready_because(&mut refused, "Password authentication failed").await;
    assert!(why.starts_with("connecting to Redis"), "{why}");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(format!("not-{REDIS_PASSWORD}"))
        .query_async(&mut con)
        .await
        .unwrap();
    refused.wait_ready().await;
    let body = push_and_read(&refused, "c8", 4.0).await;
    assert_eq!(body["features"][0]["value"], 4.0, "{body}");
    refused.stop();
    for log in [fathom.log.clone(), log] {
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!text.contains(REDIS_PASSWORD), "the Redis password is in {}: {text}", log.display());
    }
    let text = std::fs::read_to_string(dir.path().join("wrong.log")).unwrap();
    assert!(text.contains("connecting to Redis") && text.contains("Password authentication failed"), "{text}");
}

/// Waits until `fathom`'s `/readyz` says the online store does not answer for a reason
/// containing `needle`, checking the process stays alive (`/healthz` 200) meanwhile; answers
/// the reason.
async fn not_ready_because(fathom: &mut Fathom, needle: &str) -> String {
    let http = fathom_monitor::https::default_client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            fathom.child.try_wait().unwrap().is_none(),
            "exited: {}",
            std::fs::read_to_string(&fathom.log).unwrap()
        );
        if let Ok(r) = http.get(fathom.url("/readyz")).send().await {
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(status, 503, "{body}");
            let why = body["online_store"].as_str().unwrap_or_default().to_string();
            if why.contains(needle) {
                let alive = http.get(fathom.url("/healthz")).send().await.unwrap().status();
                assert_eq!(alive, 200, "alive while it waits");
                let lookup = http.get(fathom.url("/v1/features/cards/c1")).send().await.unwrap();
                assert_eq!(lookup.status(), 503, "no lookups before the store answers");
                return why;
            }
        }
        assert!(Instant::now() < deadline, "no reason {needle:?}: {}", std::fs::read_to_string(&fathom.log).unwrap());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_online_store_reaches_redis_over_tls_trusting_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificate(dir.path());
    let redis_port = free_port();
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", "0", "--tls-port", &redis_port.to_string()])
        .args(["--tls-cert-file", &cert, "--tls-key-file", &key, "--tls-ca-cert-file", &ca])
        .args(["--tls-auth-clients", "no", "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    let _redis = Guarded(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", redis_port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let port = free_port();
    let online = format!(r#"{{ redis: {{ url: "rediss://127.0.0.1:{redis_port}", ca: {ca} }} }}"#);
    let config = project(dir.path(), port, &online, "");
    let mut fathom = Fathom::start(&["serve", "-c", &config], port, &dir.path().join("fathom.log"));
    fathom.wait_ready().await;
    let body = push_and_read(&fathom, "c9", 1.5).await;
    assert_eq!(body["features"][0]["value"], 1.5, "{body}");
    fathom.stop();
    // the entity is in the TLS Redis (read back over TLS, trusting the same CA)
    let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(std::fs::read(&ca).unwrap()) };
    let url = format!("rediss://127.0.0.1:{redis_port}");
    let tls = redis::Client::build_with_tls(url.as_str(), certs).unwrap();
    let mut con = tls.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*c9*").query_async(&mut con).await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");

    // without the CA the server's certificate is not trusted: the process waits, not ready, and
    // says why; SIGTERM ends the wait
    let config =
        project(dir.path(), port, &format!(r#"{{ redis: {{ url: "rediss://127.0.0.1:{redis_port}" }} }}"#), "");
    let mut waiting = Fathom::start(&["serve", "-c", &config], port, &dir.path().join("untrusted.log"));
    let why = not_ready_because(&mut waiting, "certificate").await;
    assert!(why.starts_with("connecting to Redis"), "{why}");
    waiting.stop();
}

const ACL_PASSWORD: &str = "acl-sekrit-9c3e";

/// A Redis server speaking TLS only, with the `default` user off and one ACL user `fathom`
/// (password [`ACL_PASSWORD`]); a cluster node when `cluster` (its bus over TLS too).
fn acl_tls_redis(dir: &Path, ca: &str, cert: &str, key: &str, cluster: bool) -> (u16, Guarded) {
    // a cluster node's bus listens on port + 10000
    let bus_free = |p: u16| p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok();
    let port = std::iter::repeat_with(free_port).find(|&p| !cluster || bus_free(p)).unwrap();
    let node_dir = dir.join(format!("redis-{port}"));
    std::fs::create_dir_all(&node_dir).unwrap();
    let mut command = Command::new("redis-server");
    command
        .current_dir(&node_dir)
        .args(["--bind", "127.0.0.1", "--port", "0", "--tls-port", &port.to_string()])
        .args(["--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca])
        .args(["--tls-auth-clients", "no", "--save", "", "--appendonly", "no"])
        .args(["--user", "default", "off", "--user", "fathom", "on", &format!(">{ACL_PASSWORD}"), "~*", "&*", "+@all"]);
    if cluster {
        command.args(["--cluster-enabled", "yes", "--tls-cluster", "yes", "--cluster-config-file", "nodes.conf"]);
    }
    let log = node_dir.join("redis.log");
    let child = command.stdout(std::fs::File::create(&log).unwrap()).spawn().expect("redis-server");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start: {}", std::fs::read_to_string(&log).unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    (port, Guarded(child))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_online_store_logs_in_as_an_acl_user_over_tls_to_a_server_and_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificate(dir.path());
    let password_file = dir.path().join("redis-password");
    std::fs::write(&password_file, format!("{ACL_PASSWORD}\n")).unwrap();
    let login = format!("ca: {ca}, username: fathom, password: \"file:{}\"", password_file.display());

    // one server
    let (redis_port, _redis) = acl_tls_redis(dir.path(), &ca, &cert, &key, false);
    let port = free_port();
    let online = format!(r#"{{ redis: {{ url: "rediss://127.0.0.1:{redis_port}", {login} }} }}"#);
    let config = project(dir.path(), port, &online, "");
    let mut fathom = Fathom::start(&["serve", "-c", &config], port, &dir.path().join("single.log"));
    fathom.wait_ready().await;
    let body = push_and_read(&fathom, "a1", 2.0).await;
    assert_eq!(body["features"][0]["value"], 2.0, "{body}");
    fathom.stop();

    // a wrong password for the same user: not ready, the reason named, never the password
    let wrong = format!(
        r#"{{ redis: {{ url: "rediss://127.0.0.1:{redis_port}", ca: {ca}, username: fathom, password: "env:FATHOM_TEST_WRONG" }} }}"#
    );
    let config = project(dir.path(), port, &wrong, "");
    let env = [("FATHOM_TEST_WRONG", "not-the-password"), ("FATHOM_LOG", "debug")];
    let mut refused = Fathom::start_with(&["serve", "-c", &config], port, &dir.path().join("refused.log"), &env);
    let why = not_ready_because(&mut refused, "Password authentication failed").await;
    assert!(!why.contains("not-the-password"), "{why}");
    refused.stop();
    let text = std::fs::read_to_string(dir.path().join("refused.log")).unwrap();
    assert!(text.contains("Password authentication failed") && !text.contains("not-the-password"), "{text}");

    // a three-node cluster, TLS on the client port and the bus, the same ACL user on each node
    let nodes: Vec<(u16, Guarded)> = (0..3).map(|_| acl_tls_redis(dir.path(), &ca, &cert, &key, true)).collect();
    let addresses: Vec<String> = nodes.iter().map(|(p, _)| format!("127.0.0.1:{p}")).collect();
    let created = Command::new("timeout") // it waits for the nodes to meet, without a limit
        .args([
            "60",
            "redis-cli",
            "--tls",
            "--cacert",
            &ca,
            "--user",
            "fathom",
            "--pass",
            ACL_PASSWORD,
            "--no-auth-warning",
        ])
        .arg("--cluster")
        .arg("create")
        .args(&addresses)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stdout));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = Command::new("redis-cli")
            .args(["--tls", "--cacert", &ca, "--user", "fathom", "--pass", ACL_PASSWORD, "--no-auth-warning"])
            .args(["-p", &nodes[0].0.to_string(), "cluster", "info"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
            break;
        }
        assert!(Instant::now() < deadline, "{}", String::from_utf8_lossy(&info.stdout));
        std::thread::sleep(Duration::from_millis(200));
    }
    let urls: Vec<String> = addresses.iter().map(|a| format!("\"rediss://{a}\"")).collect();
    let online = format!(r#"{{ redis: {{ cluster: [{}], {login} }} }}"#, urls.join(", "));
    let config = project(dir.path(), port, &online, "");
    let mut fathom = Fathom::start(&["serve", "-c", &config], port, &dir.path().join("cluster.log"));
    fathom.wait_ready().await;
    for (i, card) in ["k1", "k2", "k3", "k4"].iter().enumerate() {
        let body = push_and_read(&fathom, card, i as f64 + 0.5).await;
        assert_eq!(body["features"][0]["value"], i as f64 + 0.5, "{body}");
    }
    fathom.stop();
    for log in ["single.log", "cluster.log"] {
        let text = std::fs::read_to_string(dir.path().join(log)).unwrap();
        assert!(!text.contains(ACL_PASSWORD), "the password is in {log}: {text}");
    }
}

/// A Kafka-compatible broker of the test's own: tansu with `--authentication` (SCRAM-SHA-256
/// and -512; tansu 0.6.0 offers no PLAIN) on SQLite storage, holding one SCRAM user. With TLS,
/// clients reach it only through a TLS terminator whose port it advertises: tansu 0.6.0 takes
/// `--cert`/`--key` but does not use them yet.
struct SaslBroker {
    port: u16,
    /// The CA clients trust, when the broker speaks TLS.
    ca: Option<String>,
    _tansu: Guarded,
}

impl SaslBroker {
    /// Starts the broker with `user` (name, password) for `mechanism` (`SCRAM-SHA-256` or `-512`).
    /// The user is added with authentication off — an authenticated broker lets no one in to
    /// add the first — and the broker then restarts with it on, over the same storage.
    async fn start(dir: &Path, tls: bool, mechanism: &str, user: (&str, &str)) -> SaslBroker {
        let (tansu, port) = (free_port(), free_port());
        let advertised = if tls { port } else { tansu };
        let broker = |authentication: bool, log: &str| {
            let mut command = Command::new("tansu");
            command.current_dir(dir).arg("broker").args(authentication.then_some("--authentication"));
            command
                .args(["--listener-url", &format!("tcp://127.0.0.1:{tansu}")])
                .args(["--advertised-listener-url", &format!("tcp://127.0.0.1:{advertised}")])
                .args(["--storage-engine", "sqlite://tansu.db"])
                .stdout(std::fs::File::create(dir.join(log)).unwrap())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map(Guarded)
                .expect("tansu (installed by the test command)")
        };
        let listening = || async {
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect(("127.0.0.1", tansu)).is_err() {
                assert!(Instant::now() < deadline, "tansu did not start");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let open = broker(false, "tansu-setup.log");
        listening().await;
        let scram = if mechanism == "SCRAM-SHA-256" { "scram256" } else { "scram512" };
        let out = Command::new("tansu")
            .args(["user", "create", "--broker", &format!("tcp://127.0.0.1:{tansu}"), "--mechanism", scram])
            .args([user.0, user.1])
            .output()
            .unwrap();
        assert!(out.status.success(), "tansu user create: {}", String::from_utf8_lossy(&out.stderr));
        drop(open);
        let guard = broker(true, "tansu.log");
        listening().await;
        if !tls {
            return SaslBroker { port: tansu, ca: None, _tansu: guard };
        }
        let (ca, cert, key) = certificate(dir);
        let acceptor =
            fathom_api::tls::acceptor(&fathom_project::tls::TlsConfig { cert: cert.into(), key: key.into() }).unwrap();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut client) = acceptor.accept(client).await else { return };
                    if let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", tansu)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        SaslBroker { port, ca: Some(ca), _tansu: guard }
    }

    /// librdkafka settings for a client of this broker, as (key, value) pairs.
    fn options(&self, mechanism: &str, user: &str, password: &str) -> Vec<(&'static str, String)> {
        let protocol = if self.ca.is_some() { "SASL_SSL" } else { "SASL_PLAINTEXT" };
        let mut options = vec![
            ("bootstrap.servers", format!("127.0.0.1:{}", self.port)),
            ("security.protocol", protocol.to_string()),
            ("sasl.mechanism", mechanism.to_string()),
            ("sasl.username", user.to_string()),
            ("sasl.password", password.to_string()),
        ];
        options.extend(self.ca.iter().map(|ca| ("ssl.ca.location", ca.clone())));
        options
    }

    fn client(&self, mechanism: &str, user: &str, password: &str) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        for (key, value) in self.options(mechanism, user, password) {
            config.set(key, value);
        }
        config
    }
}

const KAFKA_PASSWORD: &str = "kafka-sekrit-93c1";

/// A project consuming `topic` with the broker's SASL settings, the password from the
/// environment (`FATHOM_TEST_KAFKA_PASSWORD`).
fn kafka_project(dir: &Path, port: u16, broker: &SaslBroker, mechanism: &str, topic: &str) -> String {
    let options: Vec<String> = broker
        .options(mechanism, "fathom", "env:FATHOM_TEST_KAFKA_PASSWORD")
        .into_iter()
        .filter(|(key, _)| *key != "bootstrap.servers")
        .map(|(key, value)| format!("{key}: \"{value}\""))
        .collect();
    let d = dir.display();
    let yaml = format!(
        r#"
project: {project}
stores:
  online: {{ embedded: {{}} }}
  offline: {{ parquet: {{ path: {d}/offline }} }}
  kafka: {{ bootstrap_servers: "127.0.0.1:{kafka}", options: {{ {options} }} }}
sources:
  tx: {{ kafka: {{ topic: {topic} }}, key: card_id, timestamp: ts }}
entities:
  card: {{ key: card_id }}
feature_sets:
  cards:
    entity: card
    source: tx
    aggregations: [{{ column: amount, functions: [sum], windows: [1h], period: 1m }}]
server: {{ listen: "127.0.0.1:{port}" }}
processing: {{ checkpoint_interval: 1s }}
"#,
        project = common::unique("kafka-sasl"),
        kafka = broker.port,
        options = options.join(", "),
    );
    let path = dir.join(format!("{}.yaml", common::unique("project")));
    std::fs::write(&path, yaml).unwrap();
    path.display().to_string()
}

/// Fathom consumes from a broker that requires SASL (over TLS or not): with the right password
/// (from the environment) every event is applied; with a wrong one nothing is, readiness says
/// the login was refused, and neither log holds the password.
async fn consumes_through_sasl(tls: bool, mechanism: &str) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let dir = tempfile::tempdir().unwrap();
    let broker = SaslBroker::start(dir.path(), tls, mechanism, ("fathom", KAFKA_PASSWORD)).await;
    let topic = common::unique("tx-sasl");
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        broker.client(mechanism, "fathom", KAFKA_PASSWORD).create().unwrap();
    let new = rdkafka::admin::NewTopic::new(&topic, 2, rdkafka::admin::TopicReplication::Fixed(1));
    let created = admin.create_topics([&new], &rdkafka::admin::AdminOptions::new()).await.unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let producer: FutureProducer = broker.client(mechanism, "fathom", KAFKA_PASSWORD).create().unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    for i in 0..20 {
        let event = serde_json::json!({"card_id": format!("c{}", i % 2), "ts": now, "amount": i});
        let payload = event.to_string();
        let record = FutureRecord::to(&topic).key("k").payload(&payload).partition(i % 2);
        producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();
    }

    let port = free_port();
    let config = kafka_project(dir.path(), port, &broker, mechanism, &topic);
    let env = [("FATHOM_TEST_KAFKA_PASSWORD", KAFKA_PASSWORD), ("FATHOM_LOG", "debug")];
    let mut fathom = Fathom::start_with(&["serve", "-c", &config], port, &dir.path().join("fathom.log"), &env);
    fathom.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body: serde_json::Value = common::get_json(fathom.url("/v1/features/cards/c1")).await;
        // c1 holds the odd amounts 1 + 3 + … + 19
        if body["features"][0]["value"] == 100.0 {
            break;
        }
        let log = std::fs::read_to_string(&fathom.log).unwrap();
        assert!(Instant::now() < deadline, "not every event applied: {body}\n{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fathom.stop();

    // a wrong password: readiness names the refused login and nothing is consumed
    let port = free_port();
    let config = kafka_project(dir.path(), port, &broker, mechanism, &topic);
    let env = [("FATHOM_TEST_KAFKA_PASSWORD", "not-the-password"), ("FATHOM_LOG", "debug")];
    let log = dir.path().join("wrong.log");
    let refused = Fathom::start_with(&["serve", "-c", &config], port, &log, &env);
    let deadline = Instant::now() + Duration::from_secs(60);
    let complaint = loop {
        let body: Option<serde_json::Value> =
            match fathom_monitor::https::default_client().get(refused.url("/readyz")).send().await {
                Ok(answer) => answer.json().await.ok(),
                Err(_) => None,
            };
        if let Some(warning) = body.as_ref().and_then(|b| b["warnings"]["kafka"].as_str()) {
            break warning.to_string();
        }
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(Instant::now() < deadline, "no refused login reported: {body:?}\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(complaint.contains("SASL authentication error"), "{complaint}");
    let body: serde_json::Value = common::get_json(refused.url("/v1/features/cards/c1")).await;
    assert_eq!(body["features"][0]["status"], "NOT_FOUND", "consumed with a wrong password: {body}");
    drop(refused);
    for log in [fathom.log.clone(), log] {
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!text.contains(KAFKA_PASSWORD), "the Kafka password is in {}: {text}", log.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sasl_ssl_with_scram_sha_512() {
    consumes_through_sasl(true, "SCRAM-SHA-512").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sasl_plaintext_with_scram_sha_256() {
    consumes_through_sasl(false, "SCRAM-SHA-256").await;
}
