//! The InfluxDB writer: points as line protocol over HTTP, to the v1 API (`/write?db=`, optional
//! user and password: InfluxDB 1.x, 3.x) or the v2 API (`/api/v2/write?org=&bucket=` with
//! `Authorization: Token`: InfluxDB 2.x, 3.x).
//!
//! Points are batched; a batch that cannot be written (InfluxDB down, 5xx, timeouts) is kept and
//! retried with exponential backoff, in order. Kept batches beyond `max_memory_points` go to
//! spill files in `spill_dir` (removed once written to InfluxDB), so an outage costs disk, not
//! points. [`Writer::persist`] spills everything still in memory: called before input offsets
//! are committed, a restart resends every point the committed input produced.
//! A 4xx answer other than 429 means the batch itself is refused (e.g. a field-type conflict):
//! it is logged and dropped rather than blocking every later point.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// A field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    /// A float (non-finite values are left out: line protocol cannot carry them).
    Float(f64),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(String),
}

/// One point.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Measurement.
    pub measurement: String,
    /// Tags, in any order (sorted when encoded, as InfluxDB prefers).
    pub tags: Vec<(String, String)>,
    /// Fields; at least one finite.
    pub fields: Vec<(String, Field)>,
    /// Time, ns since the epoch.
    pub time_ns: i64,
}

/// Escapes `specials` with a backslash. A run of backslashes right before a special character
/// (or the end, where a separator follows) is doubled, so it cannot escape what follows it: a
/// trailing `\` in a tag value used to swallow the separator and shift every later field (found
/// by the fuzzer, `fuzz/regressions/line_protocol`). Other backslashes are kept as they are.
fn escape(text: &str, specials: &[char]) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                let run = chars[i..].iter().take_while(|c| **c == '\\').count();
                let next = chars.get(i + run);
                let doubled = next.is_none_or(|n| specials.contains(n) || *n == '\n');
                out.extend(std::iter::repeat_n('\\', if doubled { 2 * run } else { run }));
                i += run;
                continue;
            }
            '\n' => out.push_str("\\n"),
            c if specials.contains(&c) => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

impl Point {
    /// The point as one line of line protocol; `None` when no field can be written.
    pub fn encode(&self) -> Option<String> {
        let fields: Vec<String> = self
            .fields
            .iter()
            .filter_map(|(key, value)| {
                let value = match value {
                    Field::Float(x) if x.is_finite() => format!("{x:?}"),
                    Field::Float(_) => return None,
                    Field::Int(n) => format!("{n}i"),
                    Field::Bool(b) => b.to_string(),
                    Field::Str(s) => {
                        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
                    }
                };
                Some(format!("{}={value}", escape(key, &[',', '=', ' '])))
            })
            .collect();
        if fields.is_empty() {
            return None;
        }
        let mut tags: Vec<&(String, String)> = self.tags.iter().filter(|(_, v)| !v.is_empty()).collect();
        tags.sort();
        let mut line = escape(&self.measurement, &[',', ' ']);
        for (key, value) in tags {
            line.push(',');
            line.push_str(&escape(key, &[',', '=', ' ']));
            line.push('=');
            line.push_str(&escape(value, &[',', '=', ' ']));
        }
        line.push(' ');
        line.push_str(&fields.join(","));
        line.push(' ');
        line.push_str(&self.time_ns.to_string());
        Some(line)
    }
}

/// `monitoring.influxdb` in the project file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxConfig {
    /// Base URL, e.g. `http://127.0.0.1:8086`.
    pub url: String,
    /// v1: the database.
    #[serde(default)]
    pub database: Option<String>,
    /// v1: user (password from `password`).
    #[serde(default)]
    pub user: Option<String>,
    /// v1: password, `env:NAME` or `file:/path`.
    #[serde(default)]
    pub password: Option<String>,
    /// v2: organisation.
    #[serde(default)]
    pub org: Option<String>,
    /// v2: bucket.
    #[serde(default)]
    pub bucket: Option<String>,
    /// v2: API token, `env:NAME` or `file:/path`.
    #[serde(default)]
    pub token: Option<String>,
    /// Points per request. Default: 5000.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Points kept in memory while InfluxDB is unreachable before spilling to disk. Default: 100000.
    #[serde(default = "default_memory")]
    pub max_memory_points: usize,
    /// Where unwritten batches spill. Default: `data/influx-spill`.
    #[serde(default = "default_spill")]
    pub spill_dir: PathBuf,
    /// For an `https://` URL: a private CA, a client certificate ([`crate::https::ClientTls`]).
    #[serde(default)]
    pub tls: Option<crate::https::ClientTls>,
}

fn default_batch() -> usize {
    5_000
}
fn default_memory() -> usize {
    100_000
}
fn default_spill() -> PathBuf {
    PathBuf::from("data/influx-spill")
}

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum InfluxError {
    /// Not sent or not answered.
    #[error("InfluxDB unreachable: {0}")]
    Unreachable(String),
    /// Answered with an error status worth retrying (5xx, 429; 401/403/404: credentials or a
    /// missing database, which someone can fix).
    #[error("InfluxDB answered {status}: {body}")]
    Retry {
        /// HTTP status.
        status: u16,
        /// Its message.
        body: String,
    },
    /// The batch was refused (4xx): retrying it would fail again.
    #[error("InfluxDB refused the batch ({status}): {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Its message.
        body: String,
    },
    /// Spill file I/O.
    #[error("spill file {path}: {source}")]
    Spill {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Configuration.
    #[error("monitoring.influxdb: {0}")]
    Config(String),
}

fn secret(value: &Option<String>) -> Result<Option<String>, InfluxError> {
    value.as_deref().map(fathom_ingest::config::resolve_secret).transpose().map_err(InfluxError::Config)
}

/// A queued batch: its lines, and its spill file once spilled.
struct Batch {
    lines: String,
    points: usize,
    spilled: Option<PathBuf>,
}

/// Writes points to InfluxDB, in order, losing none while it is down.
pub struct Writer {
    http: reqwest::Client,
    endpoint: String,
    auth: Option<String>,
    config: InfluxConfig,
    queue: VecDeque<Batch>,
    pending: Vec<String>,
    in_memory: usize,
    seq: u64,
    /// Delay before the next attempt after a failure.
    backoff: Duration,
}

impl Writer {
    /// A writer (secrets resolved); batches left in `spill_dir` by an earlier run are queued first.
    pub fn new(config: InfluxConfig) -> Result<Writer, InfluxError> {
        let base = config.url.trim_end_matches('/');
        let (endpoint, auth) = match (&config.database, &config.bucket) {
            (Some(db), None) => {
                let url = format!("{base}/write?db={}&precision=ns", urlencode(db));
                // a header, not `u=`/`p=` in the URL, which proxies and access logs keep
                let auth = match (&config.user, secret(&config.password)?) {
                    (Some(user), Some(password)) => {
                        use base64::Engine as _;
                        let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                        Some(format!("Basic {pair}"))
                    }
                    _ => None,
                };
                (url, auth)
            }
            (None, Some(bucket)) => {
                let org = config.org.as_deref().ok_or_else(|| InfluxError::Config("v2 needs `org`".into()))?;
                let token = secret(&config.token)?.ok_or_else(|| InfluxError::Config("v2 needs `token`".into()))?;
                let url =
                    format!("{base}/api/v2/write?org={}&bucket={}&precision=ns", urlencode(org), urlencode(bucket));
                (url, Some(format!("Token {token}")))
            }
            _ => {
                return Err(InfluxError::Config(
                    "set `database` (v1 API) or `org` + `bucket` + `token` (v2 API)".into(),
                ))
            }
        };
        let http = crate::https::client(config.tls.as_ref(), "monitoring.influxdb.tls")
            .map_err(|e| InfluxError::Config(e.to_string()))?
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| InfluxError::Config(e.to_string()))?;
        let mut writer = Writer {
            http,
            endpoint,
            auth,
            queue: VecDeque::new(),
            pending: Vec::new(),
            in_memory: 0,
            seq: 0,
            backoff: Duration::ZERO,
            config,
        };
        writer.recover()?;
        Ok(writer)
    }

    fn recover(&mut self) -> Result<(), InfluxError> {
        let dir = &self.config.spill_dir;
        let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
        let mut files: Vec<PathBuf> =
            entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "lp")).collect();
        files.sort();
        for path in files {
            let lines =
                std::fs::read_to_string(&path).map_err(|source| InfluxError::Spill { path: path.clone(), source })?;
            let points = lines.lines().count();
            self.queue.push_back(Batch { lines, points, spilled: Some(path) });
        }
        Ok(())
    }

    /// Queues points (cut into batches); nothing is sent until [`Writer::flush`].
    pub fn push(&mut self, points: &[Point]) -> Result<(), InfluxError> {
        for point in points {
            if let Some(line) = point.encode() {
                self.pending.push(line);
            }
            if self.pending.len() >= self.config.batch_size {
                self.seal()?;
            }
        }
        Ok(())
    }

    /// Points not yet written (queued and pending).
    pub fn backlog(&self) -> usize {
        self.queue.iter().map(|b| b.points).sum::<usize>() + self.pending.len()
    }

    fn seal(&mut self) -> Result<(), InfluxError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let lines = std::mem::take(&mut self.pending).join("\n");
        let points = lines.lines().count();
        let mut batch = Batch { lines, points, spilled: None };
        if self.in_memory + points > self.config.max_memory_points {
            self.spill(&mut batch)?;
        } else {
            self.in_memory += points;
        }
        self.queue.push_back(batch);
        Ok(())
    }

    fn spill(&mut self, batch: &mut Batch) -> Result<(), InfluxError> {
        let dir = self.config.spill_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| InfluxError::Spill { path: dir.clone(), source })?;
        self.seq += 1;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = dir.join(format!("{nanos:020}-{:06}.lp", self.seq));
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &batch.lines).map_err(|source| InfluxError::Spill { path: tmp.clone(), source })?;
        std::fs::rename(&tmp, &path).map_err(|source| InfluxError::Spill { path: path.clone(), source })?;
        batch.spilled = Some(path);
        Ok(())
    }

    async fn send(&self, body: &str) -> Result<(), InfluxError> {
        let mut request = self.http.post(&self.endpoint).body(body.to_string());
        if let Some(auth) = &self.auth {
            request = request.header("Authorization", auth);
        }
        let response = request.send().await.map_err(|e| InfluxError::Unreachable(crate::https::describe(e)))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let body: String = response.text().await.unwrap_or_default().chars().take(300).collect();
        // 401/403 (credentials) and 404 (database or bucket missing) are the configuration's
        // fault, not the batch's: kept until someone fixes it, like an outage
        if status == 429 || status >= 500 || matches!(status, 401 | 403 | 404) {
            Err(InfluxError::Retry { status, body })
        } else {
            Err(InfluxError::Refused { status, body })
        }
    }

    /// Sends every queued batch in order; stops at the first that cannot be written (kept for
    /// the next flush, after the backoff). Returns the points written.
    pub async fn flush(&mut self) -> Result<usize, InfluxError> {
        self.seal()?;
        let mut written = 0;
        while let Some(batch) = self.queue.front() {
            match self.send(&batch.lines).await {
                Ok(()) => {}
                Err(InfluxError::Refused { status, body }) => {
                    tracing::warn!(status, body, points = batch.points, "InfluxDB refused a batch; dropped");
                }
                Err(e) => {
                    self.backoff = (self.backoff * 2).clamp(Duration::from_millis(200), Duration::from_secs(30));
                    // batches waiting in memory past the limit go to disk now
                    let mut memory = 0;
                    for i in 0..self.queue.len() {
                        if self.queue[i].spilled.is_none() {
                            memory += self.queue[i].points;
                            if memory > self.config.max_memory_points {
                                let mut batch = std::mem::replace(
                                    &mut self.queue[i],
                                    Batch { lines: String::new(), points: 0, spilled: None },
                                );
                                self.spill(&mut batch)?;
                                self.in_memory -= batch.points;
                                self.queue[i] = batch;
                            }
                        }
                    }
                    return Err(e);
                }
            }
            let batch = self.queue.pop_front().expect("front exists");
            match &batch.spilled {
                Some(path) => {
                    let _ = std::fs::remove_file(path);
                }
                None => self.in_memory -= batch.points,
            }
            written += batch.points;
            self.backoff = Duration::ZERO;
        }
        Ok(written)
    }

    /// Makes every queued point durable: in-memory batches (and pending points) go to spill
    /// files. Call before committing the input offsets the points came from; a restarted writer
    /// resends them.
    pub fn persist(&mut self) -> Result<(), InfluxError> {
        self.seal()?;
        for i in 0..self.queue.len() {
            if self.queue[i].spilled.is_none() {
                let mut batch =
                    std::mem::replace(&mut self.queue[i], Batch { lines: String::new(), points: 0, spilled: None });
                self.spill(&mut batch)?;
                self.in_memory -= batch.points;
                self.queue[i] = batch;
            }
        }
        Ok(())
    }

    /// The wait before the next flush attempt (zero when the last one succeeded).
    pub fn backoff(&self) -> Duration {
        self.backoff
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(measurement: &str, tags: &[(&str, &str)], fields: Vec<(&str, Field)>) -> Point {
        Point {
            measurement: measurement.into(),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            fields: fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            time_ns: 1_700_000_000_000_000_000,
        }
    }

    fn config(database: Option<&str>, bucket: Option<&str>, token: Option<&str>) -> InfluxConfig {
        InfluxConfig {
            url: "http://127.0.0.1:8086/".into(),
            database: database.map(String::from),
            user: Some("mon itor".into()),
            password: Some("env:FATHOM_TEST_INFLUX_PASSWORD".into()),
            org: Some("acme corp".into()),
            bucket: bucket.map(String::from),
            token: token.map(String::from),
            batch_size: 10,
            max_memory_points: 10,
            spill_dir: std::env::temp_dir().join("fathom-influx-unit-none"),
            tls: None,
        }
    }

    #[test]
    fn both_write_apis_are_addressed_with_their_credentials() {
        std::env::set_var("FATHOM_TEST_INFLUX_PASSWORD", "p&ss");
        let v1 = Writer::new(config(Some("fathom"), None, None)).unwrap();
        assert_eq!(v1.endpoint, "http://127.0.0.1:8086/write?db=fathom&precision=ns", "no credentials in the URL");
        // base64("mon itor:p&ss")
        assert_eq!(v1.auth.as_deref(), Some("Basic bW9uIGl0b3I6cCZzcw=="));
        std::env::set_var("FATHOM_TEST_INFLUX_TOKEN", "t0ken");
        let v2 = Writer::new(config(None, Some("monitoring"), Some("env:FATHOM_TEST_INFLUX_TOKEN"))).unwrap();
        assert_eq!(v2.endpoint, "http://127.0.0.1:8086/api/v2/write?org=acme%20corp&bucket=monitoring&precision=ns");
        assert_eq!(v2.auth.as_deref(), Some("Token t0ken"));
        assert!(Writer::new(config(None, Some("b"), None)).is_err(), "v2 without a token");
        assert!(Writer::new(config(Some("a"), Some("b"), Some("t"))).is_err(), "both APIs at once");
    }

    #[test]
    fn a_backslash_before_a_separator_does_not_escape_it() {
        // fuzz/regressions/line_protocol-*: a measurement "\\" and a tag value ending in one
        let point = Point {
            measurement: "\\".into(),
            tags: vec![("k".into(), "a\\".into()), ("j".into(), "b\\,c".into())],
            fields: vec![("f\\".into(), Field::Int(1))],
            time_ns: 7,
        };
        assert_eq!(point.encode().unwrap(), "\\\\,j=b\\\\\\,c,k=a\\\\ f\\\\=1i 7");
        // a backslash before anything else stays as it is
        let plain =
            Point { measurement: "a\\b".into(), tags: vec![], fields: vec![("x".into(), Field::Int(1))], time_ns: 1 };
        assert_eq!(plain.encode().unwrap(), "a\\b x=1i 1");
    }

    #[test]
    fn line_protocol_escapes_every_special_character_where_it_matters() {
        let p = point(
            "drift, per feature",
            &[("model", "fraud v2"), ("feature", "a=b,c"), ("empty", "")],
            vec![
                ("tvd", Field::Float(0.25)),
                ("n", Field::Int(-3)),
                ("ok", Field::Bool(true)),
                ("note", Field::Str("say \"hi\"\\ now\n".into())),
                ("field key", Field::Float(1e-12)),
                ("nan", Field::Float(f64::NAN)),
            ],
        );
        assert_eq!(
            p.encode().unwrap(),
            r#"drift\,\ per\ feature,feature=a\=b\,c,model=fraud\ v2 tvd=0.25,n=-3i,ok=true,note="say \"hi\"\\ now\n",field\ key=1e-12 1700000000000000000"#
        );
        assert_eq!(point("m", &[], vec![("x", Field::Float(f64::INFINITY))]).encode(), None, "no writable field");
        assert_eq!(point("m", &[], vec![("x", Field::Float(3.0))]).encode().unwrap(), "m x=3.0 1700000000000000000");
    }
}
