//! The Redis online store, single node or cluster, through pipelines.

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;

use futures_util::future::try_join_all;

use super::{OnlineError, Write};

/// Commands per pipeline: large enough to amortise round trips, small enough to keep replies
/// and Redis's output buffers modest.
const CHUNK: usize = 2_000;

/// Single-key commands in flight at once on a cluster.
const IN_FLIGHT: usize = 256;

/// How the Redis deployment is shaped, whom to trust over TLS and whom to log in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// One server (`redis://` or `rediss://`).
    Single {
        /// Its URL.
        url: String,
        /// PEM certificate(s) of the CA to trust for `rediss://` (else the system's roots).
        ca: Option<Vec<u8>>,
        /// Credentials besides (and overriding) those in the URL.
        auth: RedisAuth,
    },
    /// Redis Cluster seed nodes.
    Cluster {
        /// Their URLs (`rediss://` for TLS).
        nodes: Vec<String>,
        /// PEM certificate(s) of the CA to trust for `rediss://` (else the system's roots).
        ca: Option<Vec<u8>>,
        /// Credentials for every node.
        auth: RedisAuth,
    },
}

/// Who to log in as: `AUTH <username> <password>` for a Redis 6+ ACL user, `AUTH <password>` (the
/// `default` user) with a password alone.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RedisAuth {
    /// ACL user name.
    pub username: Option<String>,
    /// Its password.
    pub password: Option<String>,
}

impl std::fmt::Debug for RedisAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let password = self.password.as_ref().map(|_| "<redacted>");
        f.debug_struct("RedisAuth").field("username", &self.username).field("password", &password).finish()
    }
}

fn certificates(ca: &Option<Vec<u8>>) -> redis::TlsCertificates {
    redis::TlsCertificates { client_tls: None, root_cert: ca.clone() }
}

/// A connected Redis store.
#[derive(Clone)]
pub enum RedisStore {
    /// One server; flushes are MULTI/EXEC transactions.
    Single(ConnectionManager),
    /// A cluster; each entity's write is a single (atomic) command in its slot.
    Cluster(ClusterConnection),
}

fn err(what: &'static str) -> impl Fn(redis::RedisError) -> OnlineError {
    move |source| OnlineError::Redis { what, source }
}

impl RedisStore {
    /// Connects.
    pub async fn connect(topology: &RedisTopology) -> Result<RedisStore, OnlineError> {
        match topology {
            RedisTopology::Single { url, ca, auth } => {
                let mut info =
                    redis::IntoConnectionInfo::into_connection_info(url.as_str()).map_err(err("parsing the URL"))?;
                let mut settings = info.redis_settings().clone();
                if let Some(username) = &auth.username {
                    settings = settings.set_username(username);
                }
                if let Some(password) = &auth.password {
                    settings = settings.set_password(password);
                }
                info = info.set_redis_settings(settings);
                let client = match ca {
                    None => redis::Client::open(info),
                    Some(_) => redis::Client::build_with_tls(info, certificates(ca)),
                }
                .map_err(err("parsing the URL"))?;
                let manager = client.get_connection_manager().await.map_err(err("connecting"))?;
                Ok(RedisStore::Single(manager))
            }
            RedisTopology::Cluster { nodes, ca, auth } => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.clone());
                if ca.is_some() {
                    builder = builder.certs(certificates(ca));
                }
                if let Some(username) = &auth.username {
                    builder = builder.username(username);
                }
                if let Some(password) = &auth.password {
                    builder = builder.password(password);
                }
                let client = builder.build().map_err(err("parsing cluster URLs"))?;
                let connection = client.get_async_connection().await.map_err(err("connecting to the cluster"))?;
                Ok(RedisStore::Cluster(connection))
            }
        }
    }

    pub(super) async fn load(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, OnlineError> {
        match self {
            RedisStore::Single(c) => load_single(c, keys).await,
            RedisStore::Cluster(c) => load_cluster(c, keys).await,
        }
    }

    pub(super) async fn write(&self, writes: &[Write], offsets: &[(String, i64)]) -> Result<(), OnlineError> {
        match self {
            RedisStore::Single(c) => write_single(c, writes, offsets).await,
            RedisStore::Cluster(c) => write_cluster(c, writes, offsets).await,
        }
    }

    pub(super) async fn key_count(&self) -> Result<Option<u64>, OnlineError> {
        match self {
            RedisStore::Single(c) => {
                let n: u64 = redis::cmd("DBSIZE").query_async(&mut c.clone()).await.map_err(err("counting keys"))?;
                Ok(Some(n))
            }
            RedisStore::Cluster(_) => Ok(None),
        }
    }

    /// Runs a Lua script on the node holding `keys` (one slot).
    async fn script<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        keys: &[&str],
        args: &[&[u8]],
        what: &'static str,
    ) -> Result<T, OnlineError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        match self {
            RedisStore::Single(c) => invocation.invoke_async(&mut c.clone()).await,
            RedisStore::Cluster(c) => invocation.invoke_async(&mut c.clone()).await,
        }
        .map_err(err(what))
    }

    pub(super) async fn lease(&self, key: &str, holder: &str, ttl_ms: u64) -> Result<Option<String>, OnlineError> {
        static LEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                "local current = redis.call('GET', KEYS[1])
                 if current == false or current == ARGV[1] then
                   redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
                   return false
                 end
                 return current",
            )
        });
        let ttl = ttl_ms.to_string();
        self.script(&LEASE, &[key], &[holder.as_bytes(), ttl.as_bytes()], "taking the lease").await
    }

    pub(super) async fn release(&self, key: &str, holder: &str) -> Result<(), OnlineError> {
        static RELEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
                 return 0",
            )
        });
        self.script::<i64>(&RELEASE, &[key], &[holder.as_bytes()], "releasing the lease").await.map(drop)
    }

    pub(super) async fn write_fenced(
        &self,
        lease: &str,
        holder: &str,
        ttl_ms: u64,
        write: &Write,
    ) -> Result<Option<String>, OnlineError> {
        static FENCED: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                "local current = redis.call('GET', KEYS[1])
                 if current ~= false and current ~= ARGV[1] then return current end
                 redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
                 redis.call('HSET', KEYS[2], 'state', ARGV[3], 'updated_ms', ARGV[4])
                 return false",
            )
        });
        let (ttl, now) = (ttl_ms.to_string(), chrono::Utc::now().timestamp_millis().to_string());
        let args: [&[u8]; 4] = [holder.as_bytes(), ttl.as_bytes(), &write.state, now.as_bytes()];
        self.script(&FENCED, &[lease, &write.key], &args, "writing under the lease").await
    }

    pub(super) async fn ping(&self) -> Result<(), OnlineError> {
        let ping = redis::cmd("PING");
        let pong: Result<String, _> = match self {
            RedisStore::Single(c) => ping.query_async(&mut c.clone()).await,
            RedisStore::Cluster(c) => ping.query_async(&mut c.clone()).await,
        };
        pong.map(drop).map_err(err("ping"))
    }
}

/// Single node: one pipeline of `HGET`s per chunk.
async fn load_single(c: &ConnectionManager, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, OnlineError> {
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(CHUNK) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.hget(key, "state");
        }
        let values: Vec<Option<Vec<u8>>> = pipe.query_async(&mut c.clone()).await.map_err(err("loading state"))?;
        out.extend(values);
    }
    Ok(out)
}

/// Cluster: a pipeline may not cross slots, so one command per key, many in flight on the
/// multiplexed connections.
async fn load_cluster(c: &ClusterConnection, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, OnlineError> {
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(IN_FLIGHT) {
        let reads = chunk.iter().map(|key| {
            let mut c = c.clone();
            let mut cmd = redis::cmd("HGET");
            cmd.arg(key).arg("state");
            async move { cmd.query_async::<Option<Vec<u8>>>(&mut c).await }
        });
        out.extend(try_join_all(reads).await.map_err(err("loading state"))?);
    }
    Ok(out)
}

/// Single node: MULTI/EXEC pipelines of up to `CHUNK / 2` entities; the offsets ride with the
/// last one, so once they are written, so is everything.
async fn write_single(c: &ConnectionManager, writes: &[Write], offsets: &[(String, i64)]) -> Result<(), OnlineError> {
    let now = chrono::Utc::now().timestamp_millis().to_string();
    let chunks: Vec<&[Write]> = if writes.is_empty() { vec![&[]] } else { writes.chunks(CHUNK / 2).collect() };
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for w in chunk {
            pipe.hset_multiple(&w.key, &[("state", w.state.as_slice()), ("updated_ms", now.as_bytes())]).ignore();
            if let Some(ttl) = w.ttl_ms {
                pipe.pexpire(&w.key, ttl).ignore();
            }
        }
        if i == last {
            for (key, offset) in offsets {
                pipe.set(key, offset).ignore();
            }
        }
        let () = pipe.query_async(&mut c.clone()).await.map_err(err("writing state"))?;
    }
    Ok(())
}

/// Cluster writes: each entity's state and TTL as one MULTI/EXEC in its own slot, many in
/// flight; the offsets after every entity write succeeded.
async fn write_cluster(c: &ClusterConnection, writes: &[Write], offsets: &[(String, i64)]) -> Result<(), OnlineError> {
    let now = chrono::Utc::now().timestamp_millis().to_string();
    for chunk in writes.chunks(IN_FLIGHT) {
        let sends = chunk.iter().map(|w| {
            let mut c = c.clone();
            let mut pipe = redis::pipe();
            pipe.atomic()
                .hset_multiple(&w.key, &[("state", w.state.as_slice()), ("updated_ms", now.as_bytes())])
                .ignore();
            if let Some(ttl) = w.ttl_ms {
                pipe.pexpire(&w.key, ttl).ignore();
            }
            async move { pipe.query_async::<()>(&mut c).await }
        });
        try_join_all(sends).await.map_err(err("writing state"))?;
    }
    for (key, offset) in offsets {
        let () =
            redis::cmd("SET").arg(key).arg(offset).query_async(&mut c.clone()).await.map_err(err("writing offsets"))?;
    }
    Ok(())
}
