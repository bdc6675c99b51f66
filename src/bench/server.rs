//! A `fathom serve` child process of a benchmark, so its CPU and memory are its own.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// A running `fathom serve` on 127.0.0.1, logging to `fathom.log` in its directory.
pub(super) struct Server {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub(super) base: String,
    /// Where its project file and log are.
    pub(super) dir: PathBuf,
}

/// A port free right now on 127.0.0.1.
pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The benchmarks' project: Redis online store, Parquet offline store and dead letters under
/// `dir`, one Kafka source `tx` on `topic` (keyed by `card_id`, time `ts`), entity `card`, and
/// the feature set `cards` given as YAML lines (`features`); no `processing` section, so every
/// default. `stores_extra` goes first under `stores:` (an `influxdb:` line); `extra` at the end
/// (`models:`).
pub(super) struct Project<'a> {
    pub(super) run: &'a str,
    pub(super) redis: &'a str,
    /// `stores.online.redis.near_cache` (on by default in Fathom).
    pub(super) near_cache: bool,
    pub(super) brokers: &'a str,
    pub(super) dir: &'a Path,
    pub(super) port: u16,
    pub(super) topic: &'a str,
    pub(super) features: &'a str,
}

impl Project<'_> {
    /// The project file, with `stores_extra` first under `stores:` and `extra` at the end.
    pub(super) fn yaml(&self, stores_extra: &str, extra: &str) -> String {
        let Project { run, redis, near_cache, brokers, dir, port, topic, features } = self;
        format!(
            "project: {run}\nstores:\n{stores_extra}  online: {{ redis: {{ url: \"{redis}\"{near} }} }}\n  offline: {{ parquet: {{ path: {d}/offline }} }}\n\
             \x20 dead_letters: {{ path: {d}/dlq }}\n  kafka: {{ bootstrap_servers: \"{brokers}\", group_id: {run} }}\n\
             server: {{ listen: \"127.0.0.1:{port}\" }}\nsources:\n  tx: {{ kafka: {{ topic: {topic} }}, key: card_id, timestamp: ts }}\n\
             entities:\n  card: {{ key: card_id }}\nfeature_sets:\n  cards:\n{features}{extra}",
            d = dir.display(),
            // written only when off: older builds (`--serve-with`) do not know the key
            near = if *near_cache { "" } else { ", near_cache: false" },
            features = features.lines().map(|l| format!("    {l}\n")).collect::<String>(),
        )
    }
}

/// Creates `topics` (name, partitions) on the broker `client` points at.
pub(super) async fn create_topics(client: &rdkafka::ClientConfig, topics: &[(&str, i32)]) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = client.create()?;
    let topics: Vec<NewTopic> = topics.iter().map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1))).collect();
    for result in admin.create_topics(&topics, &AdminOptions::new()).await? {
        result.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    Ok(())
}

impl Server {
    /// Writes `yaml` to `dir/fathom.yaml`, starts `<binary> serve` on it (this executable when
    /// `None`; log level `warn`) and waits up to 60 s for `/readyz` on `port`.
    pub(super) async fn start(
        binary: Option<&Path>,
        dir: &Path,
        yaml: &str,
        port: u16,
        http: &reqwest::Client,
    ) -> anyhow::Result<Server> {
        let config = dir.join("fathom.yaml");
        std::fs::write(&config, yaml)?;
        let log = std::fs::File::create(dir.join("fathom.log"))?;
        let child = std::process::Command::new(match binary {
            Some(path) => path.to_path_buf(),
            None => std::env::current_exe()?,
        })
        .args(["serve", "-c"])
        .arg(&config)
        .env("FATHOM_LOG", "warn")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting fathom serve")?;
        let server = Server { child, base: format!("http://127.0.0.1:{port}"), dir: dir.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !http.get(format!("{}/readyz", server.base)).send().await.is_ok_and(|r| r.status().is_success()) {
            anyhow::ensure!(Instant::now() < deadline, "fathom did not become ready; see {}", server.log().display());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(server)
    }

    /// The process id.
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log file.
    pub(super) fn log(&self) -> PathBuf {
        self.dir.join("fathom.log")
    }

    /// SIGTERM, then waits for a clean exit.
    pub(super) fn stop(mut self) -> anyhow::Result<()> {
        let _ = std::process::Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "fathom serve exited with {status}; see {}", self.log().display());
        Ok(())
    }
}

impl Drop for Server {
    /// A benchmark that fails half-way leaves no server behind to skew the next one.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
