//! The shared store (`store.kind: redis`): every replica sees the same nonces, `jti`s and device
//! bindings, so a proof accepted by one replica is refused by all the others.
//!
//! Every operation touches exactly one key, either with one command (`SET NX PX`, `GET`) or with
//! one Lua script that reads and writes that key atomically (issue a nonce; consume a nonce if
//! the presenter matches — a mismatching presenter does not burn it; bind a device on first use;
//! enrol a device within the bound of its subject's registry, a hash with no TTL).
//! Redis Cluster therefore needs no hash tags and no cross-slot transaction: each call goes to the
//! one node that owns its key's slot. Keys are `countersign:{nonce|jti|binding}:<hex SHA-256>`
//! (the store's keys are already digests, so no credential or proof appears in Redis), and every
//! key carries the TTL of what it records: Redis expires them, nothing has to sweep.
//!
//! The client runs on a small runtime owned by the store (one worker thread): its connections and
//! their driver tasks live there, so they keep working whichever of Pingora's runtimes calls, and
//! none of them depends on a runtime that may stop first. Nothing connects until the first
//! operation; a failed connection is retried by a later one. Every operation is bounded by
//! `store.timeout`: when Redis is slow or down the caller gets [`StoreError::Unavailable`] and
//! high-impact requests fail closed with `503`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use ::redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use ::redis::cluster::{ClusterClient, ClusterClientBuilder};
use ::redis::cluster_async::ClusterConnection;
use ::redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use ::redis::{
    AsyncConnectionConfig, Client, Cmd, ErrorKind, FromRedisValue, IntoConnectionInfo, Pipeline,
    RedisError, RedisFuture, RedisResult, Script, ScriptInvocation, ServerErrorKind, Value,
};
use async_trait::async_trait;
use moka::sync::Cache;
use moka::Expiry;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::Mutex;

use super::{Bind, Chain, Enrol, Key, NonceRecord, ReplayStore, StoreError, Take, Taken};

/// Connection attempts may take longer than one operation's budget: a connection that is slow
/// to open still gets established while the operations that wait for it fail closed.
const CONNECT_FLOOR: Duration = Duration::from_secs(1);

/// How many issued nonces a replica tracks for `countersign_nonces_outstanding`.
const TRACKED_NONCES: u64 = 100_000;

/// Issues a nonce: `KEYS[1]` the nonce, `ARGV[1]` its TTL in ms, then field/value pairs
/// (`a` action, and when present `d` device, `r`/`p` chain root/parent).
static PUT_NONCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
",
    )
});

/// Consumes a nonce in one step: `KEYS[1]` the nonce, `ARGV[1]` the presented action (hex),
/// `ARGV[2]` the presenting device. Answers `{outcome, root, parent}` with outcome 0 unknown,
/// 1 consumed, 2 used, 3 mismatch, and each value `=`-prefixed, or empty when absent.
/// A consumed nonce becomes a tombstone (`u`) for the rest of its TTL; a mismatch changes nothing.
static TAKE_NONCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local f = redis.call('HMGET', KEYS[1], 'a', 'd', 'r', 'p', 'u')
if f[5] then return {2, '', ''} end
if not f[1] then return {0, '', ''} end
if f[1] ~= ARGV[1] or (f[2] and f[2] ~= ARGV[2]) then return {3, '', ''} end
redis.call('HSET', KEYS[1], 'u', '1')
redis.call('HDEL', KEYS[1], 'a', 'd', 'r', 'p')
local function opt(v) if v then return '=' .. v end return '' end
return {1, opt(f[3]), opt(f[4])}
",
    )
});

/// Binds a device on first use: `KEYS[1]` the session, `ARGV[1]` the key thumbprint, `ARGV[2]`
/// the TTL in ms. Answers 0 new, 1 same, 2 other.
/// Consumes a record, leaving an empty tombstone for the rest of its TTL so that a second take
/// reads as used. Returns {1, value} | {2, ''} used | {0, ''} unknown.
static TAKE_RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if not v then return {0, ''} end
if v == '' then return {2, ''} end
redis.call('SET', KEYS[1], '', 'KEEPTTL')
return {1, v}
",
    )
});

/// Compare and swap a record: `KEYS[1]` the record, `ARGV[1]` the value it must hold, `ARGV[2]`
/// the new value, `ARGV[3]` its TTL in ms. Answers 1 swapped, 0 not.
static SWAP_RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if not v or v == '' or v ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
",
    )
});

/// Adds to an index (a sorted set scored by expiry, in the server's clock): `KEYS[1]` the index,
/// `ARGV[1]` the member, `ARGV[2]` its TTL in ms. Expired members are dropped on the way.
static INDEX_ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not held or tonumber(held) < now + ttl then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
end
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
",
    )
});

/// The live members of an index: `KEYS[1]` the index, `ARGV[1]` the most to answer.
static INDEX_MEMBERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'LIMIT', 0, tonumber(ARGV[1]))
",
    )
});

static BIND_DEVICE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 2
",
    )
});

/// Records a binding's origin on first use: `KEYS[1]` the session, `ARGV[1]` `"<unix> <network>"`,
/// `ARGV[2]` the TTL in ms. Answers the record that holds.
static RECORD_ORIGIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return ARGV[1] end
return redis.call('GET', KEYS[1]) or ARGV[1]
",
    )
});

/// Marks a revocation: `KEYS[1]` the mark, `ARGV[1]` the unix time, `ARGV[2]` the TTL in ms; an
/// earlier mark is moved forward, never back.
static REVOKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local held = tonumber(redis.call('GET', KEYS[1]) or '0')
local at = tonumber(ARGV[1])
if held > at then at = held end
redis.call('SET', KEYS[1], tostring(at), 'PX', ARGV[2])
return 1
",
    )
});

/// Takes a quota slot: `KEYS[1]` the quota, `ARGV[1]` the limit, `ARGV[2]` the TTL in ms (from
/// this slot on). Answers 1 when taken, 0 when every slot is held.
static TAKE_SLOT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local held = tonumber(redis.call('GET', KEYS[1]) or '0')
if held >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], tostring(held + 1), 'PX', ARGV[2])
return 1
",
    )
});

/// Gives a quota slot back: `KEYS[1]` the quota; the count goes when it reaches zero.
static GIVE_SLOT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local held = tonumber(redis.call('GET', KEYS[1]) or '0')
if held <= 1 then redis.call('DEL', KEYS[1]) return 0 end
redis.call('SET', KEYS[1], tostring(held - 1), 'KEEPTTL')
return held - 1
",
    )
});

/// Enrols a device: `KEYS[1]` the subject's registry (a hash: device → entry), `ARGV[1]` the
/// device, `ARGV[2]` its entry, `ARGV[3]` the most devices. Answers 0 new, 1 already, 2 full.
static ENROL_DEVICE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 2 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 0
",
    )
});

/// Replaces the entry of an enrolled device: `KEYS[1]` the registry, `ARGV[1]` the device,
/// `ARGV[2]` the entry. Answers 1 when it was enrolled, 0 (and writes nothing) otherwise.
static UPDATE_DEVICE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
",
    )
});

/// Why a Redis store could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    /// The URL is malformed or names something this build cannot use.
    #[error("store.url: {0}")]
    Url(String),
    /// The client's runtime thread could not be started.
    #[error("store: cannot start the Redis client thread: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Redis-backed store shared by replicas (`store.kind: redis`).
pub struct RedisStore {
    link: Arc<Link>,
    timeout: Duration,
    handle: Handle,
    /// Owned so that dropping the store stops the client; taken in `Drop`.
    runtime: Option<Runtime>,
    issued: IssuedNonces,
}

impl RedisStore {
    /// A store for `url` (`redis://`, `redis+sentinel://host:port[,host:port]/master[/db]` or
    /// `redis+cluster://host:port[,host:port...]`) whose operations each give up after `timeout`.
    /// Parses the URL and starts the client thread; connects on first use.
    pub fn new(url: &str, timeout: Duration) -> Result<RedisStore, RedisSetupError> {
        let target = Target::parse(url, timeout)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("countersign-redis")
            .enable_all()
            .build()?;
        Ok(RedisStore {
            link: Arc::new(Link {
                target,
                connection: Mutex::new(None),
            }),
            timeout,
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            issued: IssuedNonces::new(),
        })
    }

    /// Sends `request` from the store's runtime, within the timeout.
    async fn call<T>(&self, request: Request) -> Result<T, StoreError>
    where
        T: FromRedisValue + Send + 'static,
    {
        let link = self.link.clone();
        let timeout = self.timeout;
        let task = self.handle.spawn(async move {
            let outcome = tokio::time::timeout(timeout, async {
                match request.send(&mut link.connection().await?).await {
                    // The connection broke (or the last attempt to make one failed, and a new
                    // attempt has just started): once more on a fresh connection, in the same
                    // budget. A repeat can only answer more strictly — a nonce consumed by the
                    // first try reads as used, a claimed jti as seen — never accept twice.
                    Err(e) if e.is_io_error() => {
                        link.after_failure(Some(&e)).await;
                        request.send(&mut link.connection().await?).await
                    }
                    answer => answer,
                }
            })
            .await;
            match outcome {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(e)) => {
                    link.after_failure(Some(&e)).await;
                    Err(StoreError::Unavailable(format!("redis: {e}")))
                }
                Err(_) => {
                    link.after_failure(None).await;
                    Err(StoreError::Unavailable(format!(
                        "redis did not answer within {timeout:?}"
                    )))
                }
            }
        });
        // Fail closed if the store's runtime is gone (the store is being dropped).
        task.await.unwrap_or_else(|e| {
            Err(StoreError::Unavailable(format!(
                "redis client stopped: {e}"
            )))
        })
    }
}

/// One single-key command or script call, kept so that it can be sent again.
enum Request {
    Command(Cmd),
    Script(ScriptInvocation<'static>),
}

impl Request {
    async fn send<T: FromRedisValue>(&self, connection: &mut Connection) -> RedisResult<T> {
        match self {
            Request::Command(cmd) => cmd.query_async(connection).await,
            Request::Script(invocation) => invocation.invoke_async(connection).await,
        }
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        // Not `drop(runtime)`: that blocks, and the last owner may be an async task.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[async_trait]
impl ReplayStore for RedisStore {
    async fn put_nonce(
        &self,
        nonce: &Key,
        record: NonceRecord,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let key = redis_key("nonce", nonce);
        let mut fields = vec![("a", hex::encode(record.action))];
        if let Some(device) = record.device {
            fields.push(("d", device));
        }
        if let Some(chain) = record.chain {
            fields.push(("r", chain.root));
            fields.push(("p", chain.parent));
        }
        let mut invocation = PUT_NONCE.key(key);
        invocation.arg(millis(ttl));
        for (field, value) in fields {
            invocation.arg(field).arg(value);
        }
        self.call::<i64>(Request::Script(invocation)).await?;
        self.issued.add(*nonce, ttl);
        Ok(())
    }

    async fn take_nonce(
        &self,
        nonce: &Key,
        action: &[u8; 32],
        device: &str,
    ) -> Result<Take, StoreError> {
        let key = redis_key("nonce", nonce);
        let mut invocation = TAKE_NONCE.key(key);
        invocation.arg(hex::encode(action)).arg(device);
        let (outcome, root, parent): (i64, String, String) =
            self.call(Request::Script(invocation)).await?;
        Ok(match outcome {
            1 => {
                self.issued.remove(nonce);
                Take::Consumed(match (present(root), present(parent)) {
                    (Some(root), Some(parent)) => Some(Chain { root, parent }),
                    _ => None,
                })
            }
            2 => Take::Used,
            3 => Take::Mismatch,
            _ => Take::Unknown,
        })
    }

    async fn claim_jti(&self, jti: &Key, ttl: Duration) -> Result<bool, StoreError> {
        let key = redis_key("jti", jti);
        let mut cmd = ::redis::cmd("SET");
        cmd.arg(key).arg(1).arg("NX").arg("PX").arg(millis(ttl));
        let set: Option<String> = self.call(Request::Command(cmd)).await?;
        Ok(set.is_some())
    }

    async fn bind_device(
        &self,
        session: &Key,
        jkt: &str,
        ttl: Duration,
    ) -> Result<Bind, StoreError> {
        let key = redis_key("binding", session);
        let mut invocation = BIND_DEVICE.key(key);
        invocation.arg(jkt).arg(millis(ttl));
        let outcome: i64 = self.call(Request::Script(invocation)).await?;
        Ok(match outcome {
            0 => Bind::New,
            1 => Bind::Same,
            _ => Bind::Other,
        })
    }

    async fn device(&self, session: &Key) -> Result<Option<String>, StoreError> {
        let key = redis_key("binding", session);
        let mut cmd = ::redis::cmd("GET");
        cmd.arg(key);
        self.call(Request::Command(cmd)).await
    }

    async fn record_origin(
        &self,
        session: &Key,
        network: &str,
        at: u64,
        ttl: Duration,
    ) -> Result<(String, u64), StoreError> {
        let key = redis_key("origin", session);
        let mut invocation = RECORD_ORIGIN.key(key);
        invocation.arg(format!("{at} {network}")).arg(millis(ttl));
        let held: String = self.call(Request::Script(invocation)).await?;
        Ok(parse_origin(&held).unwrap_or((network.to_string(), at)))
    }

    async fn revoke(&self, mark: &Key, at: u64, ttl: Duration) -> Result<(), StoreError> {
        let key = redis_key("revoked", mark);
        let mut invocation = REVOKE.key(key);
        invocation.arg(at).arg(millis(ttl));
        self.call::<i64>(Request::Script(invocation))
            .await
            .map(drop)
    }

    async fn take_slot(&self, quota: &Key, limit: u32, ttl: Duration) -> Result<bool, StoreError> {
        let mut invocation = TAKE_SLOT.key(redis_key("slots", quota));
        invocation.arg(limit).arg(millis(ttl));
        let taken: i64 = self.call(Request::Script(invocation)).await?;
        Ok(taken == 1)
    }

    async fn give_slot(&self, quota: &Key) -> Result<(), StoreError> {
        let invocation = GIVE_SLOT.key(redis_key("slots", quota));
        self.call::<i64>(Request::Script(invocation))
            .await
            .map(drop)
    }

    async fn revoked(&self, mark: &Key) -> Result<Option<u64>, StoreError> {
        let key = redis_key("revoked", mark);
        let mut cmd = ::redis::cmd("GET");
        cmd.arg(key);
        let at: Option<String> = self.call(Request::Command(cmd)).await?;
        Ok(at.and_then(|a| a.parse().ok()))
    }

    async fn put_record(&self, key: &Key, value: Vec<u8>, ttl: Duration) -> Result<(), StoreError> {
        let mut cmd = ::redis::cmd("SET");
        cmd.arg(redis_key("record", key))
            .arg(value)
            .arg("PX")
            .arg(millis(ttl));
        self.call::<String>(Request::Command(cmd)).await.map(drop)
    }

    async fn get_record(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        let mut cmd = ::redis::cmd("GET");
        cmd.arg(redis_key("record", key));
        let value: Option<Vec<u8>> = self.call(Request::Command(cmd)).await?;
        // An empty value is the tombstone of a consumed record.
        Ok(value.filter(|v| !v.is_empty()))
    }

    async fn take_record(&self, key: &Key) -> Result<Taken, StoreError> {
        let invocation = TAKE_RECORD.key(redis_key("record", key));
        let (outcome, value): (i64, Vec<u8>) = self.call(Request::Script(invocation)).await?;
        Ok(match outcome {
            1 => Taken::Value(value),
            2 => Taken::Used,
            _ => Taken::Unknown,
        })
    }

    async fn swap_record(
        &self,
        key: &Key,
        expected: &[u8],
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut invocation = SWAP_RECORD.key(redis_key("record", key));
        invocation.arg(expected).arg(value).arg(millis(ttl));
        let swapped: i64 = self.call(Request::Script(invocation)).await?;
        Ok(swapped == 1)
    }

    async fn index_add(&self, index: &Key, member: &str, ttl: Duration) -> Result<(), StoreError> {
        let mut invocation = INDEX_ADD.key(redis_key("index", index));
        invocation.arg(member).arg(millis(ttl));
        self.call::<i64>(Request::Script(invocation))
            .await
            .map(drop)
    }

    async fn index_members(&self, index: &Key, limit: usize) -> Result<Vec<String>, StoreError> {
        let mut invocation = INDEX_MEMBERS.key(redis_key("index", index));
        invocation.arg(limit);
        self.call(Request::Script(invocation)).await
    }

    async fn enrol_device(
        &self,
        subject: &Key,
        device: &str,
        entry: Vec<u8>,
        max: usize,
    ) -> Result<Enrol, StoreError> {
        let mut invocation = ENROL_DEVICE.key(redis_key("devices", subject));
        invocation.arg(device).arg(entry).arg(max);
        let outcome: i64 = self.call(Request::Script(invocation)).await?;
        Ok(match outcome {
            0 => Enrol::New,
            1 => Enrol::Already,
            _ => Enrol::Full,
        })
    }

    async fn enrolled_device(
        &self,
        subject: &Key,
        device: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut cmd = ::redis::cmd("HGET");
        cmd.arg(redis_key("devices", subject)).arg(device);
        self.call(Request::Command(cmd)).await
    }

    async fn enrolled_devices(&self, subject: &Key) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut cmd = ::redis::cmd("HGETALL");
        cmd.arg(redis_key("devices", subject));
        let all: std::collections::BTreeMap<String, Vec<u8>> =
            self.call(Request::Command(cmd)).await?;
        Ok(all.into_iter().collect())
    }

    async fn update_device(
        &self,
        subject: &Key,
        device: &str,
        entry: Vec<u8>,
    ) -> Result<bool, StoreError> {
        let mut invocation = UPDATE_DEVICE.key(redis_key("devices", subject));
        invocation.arg(device).arg(entry);
        let updated: i64 = self.call(Request::Script(invocation)).await?;
        Ok(updated == 1)
    }

    async fn remove_device(&self, subject: &Key, device: &str) -> Result<bool, StoreError> {
        let mut cmd = ::redis::cmd("HDEL");
        cmd.arg(redis_key("devices", subject)).arg(device);
        let removed: i64 = self.call(Request::Command(cmd)).await?;
        Ok(removed > 0)
    }

    /// Nonces this replica issued that it has not seen consumed and that have not expired: a
    /// nonce consumed on another replica is counted here until it expires.
    fn outstanding_nonces(&self) -> u64 {
        self.issued.count()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call::<String>(Request::Command(::redis::cmd("PING")))
            .await
            .map(drop)
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}

/// Where the store connects, and the connection once made.
struct Link {
    target: Target,
    /// Made on first use, on the store's runtime; `None` again after a Sentinel failure.
    connection: Mutex<Option<Connection>>,
}

impl Link {
    /// The connection, made now if there is none (one caller connects, the others wait).
    async fn connection(&self) -> RedisResult<Connection> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let connection = self.target.connect().await?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// After a failed or timed-out operation: a Sentinel connection is dropped so that the next
    /// operation asks the sentinels for the current master again. The standalone connection
    /// manager and the cluster client reconnect by themselves.
    async fn after_failure(&self, error: Option<&RedisError>) {
        let stale = error.is_none_or(|e| {
            e.is_io_error()
                || e.is_unrecoverable_error()
                || matches!(
                    e.kind(),
                    ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
                )
        });
        if stale && matches!(self.target, Target::Sentinel { .. }) {
            *self.connection.lock().await = None;
        }
    }
}

/// A parsed `store.url`.
enum Target {
    /// `redis://`: one server, through a connection manager that reconnects by itself.
    Standalone {
        client: Client,
        config: ConnectionManagerConfig,
    },
    /// `redis+cluster://`: the cluster client follows slots and reconnects by itself.
    Cluster(ClusterClient),
    /// `redis+sentinel://`: the current master, as the sentinels name it.
    Sentinel {
        client: Mutex<SentinelClient>,
        config: AsyncConnectionConfig,
    },
}

impl Target {
    /// Parses a URL without connecting. Errors never repeat the URL: it may hold a password.
    fn parse(url: &str, timeout: Duration) -> Result<Target, RedisSetupError> {
        let connect = timeout.max(CONNECT_FLOOR);
        let invalid = |e: RedisError| {
            RedisSetupError::Url(format!("not a usable Redis URL ({})", e.category()))
        };
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            let nodes = Endpoints::parse(rest, 6379)?;
            if !nodes.path.is_empty() {
                return Err(RedisSetupError::Url(
                    "a redis+cluster URL takes no database or path: \
                            Redis Cluster only has database 0"
                        .to_string(),
                ));
            }
            let urls = nodes
                .hosts
                .iter()
                .map(|h| format!("redis://{}{h}", nodes.userinfo));
            let client = ClusterClientBuilder::new(urls)
                .connection_timeout(connect)
                .response_timeout(timeout)
                .build()
                .map_err(invalid)?;
            return Ok(Target::Cluster(client));
        }
        if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            let sentinels = Endpoints::parse(rest, 26379)?;
            let (master, db) = match sentinels.path.split_once('/') {
                Some((master, db)) => (master, db),
                None => (sentinels.path, ""),
            };
            if master.is_empty() {
                return Err(RedisSetupError::Url(
                    "a redis+sentinel URL names the master after the hosts, \
                            e.g. redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster"
                        .to_string(),
                ));
            }
            // The credentials and database apply to the master; sentinels are asked without.
            let master_info = format!("redis://{}localhost/{db}", sentinels.userinfo)
                .into_connection_info()
                .map_err(invalid)?;
            let node = SentinelNodeConnectionInfo::default()
                .set_redis_connection_info(master_info.redis_settings().clone());
            let urls = sentinels
                .hosts
                .iter()
                .map(|h| format!("redis://{h}"))
                .collect();
            let client = SentinelClient::build(
                urls,
                master.to_string(),
                Some(node),
                SentinelServerType::Master,
            )
            .map_err(invalid)?;
            return Ok(Target::Sentinel {
                client: Mutex::new(client),
                config: AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect))
                    .set_response_timeout(Some(timeout)),
            });
        }
        if url.starts_with("rediss://") {
            return Err(RedisSetupError::Url(
                "rediss:// (TLS) is not supported by this build; \
                        use redis:// on a trusted network or through a TLS sidecar"
                    .to_string(),
            ));
        }
        let client = Client::open(url).map_err(invalid)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect))
            .set_response_timeout(Some(timeout))
            // One attempt per reconnection: a refused connection fails the waiting operations at
            // once (closed, fast) instead of holding them through a backoff, and the next
            // operation starts a new attempt, so service resumes with the first request after
            // Redis returns. At most one attempt is in flight per replica.
            .set_number_of_retries(0);
        Ok(Target::Standalone { client, config })
    }

    async fn connect(&self) -> RedisResult<Connection> {
        Ok(match self {
            Target::Standalone { client, config } => Connection::Standalone(
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?,
            ),
            Target::Cluster(client) => Connection::Cluster(client.get_async_connection().await?),
            Target::Sentinel { client, config } => Connection::Sentinel(
                client
                    .lock()
                    .await
                    .get_async_connection_with_config(config)
                    .await?,
            ),
        })
    }
}

/// The hosts of a multi-host URL: `[userinfo@]host[:port][,host[:port]...][/path]`.
#[derive(Debug, PartialEq, Eq)]
struct Endpoints<'a> {
    /// `user:password@`, or empty.
    userinfo: &'a str,
    /// `host:port`, the default port filled in.
    hosts: Vec<String>,
    /// What follows the first `/`.
    path: &'a str,
}

impl<'a> Endpoints<'a> {
    fn parse(rest: &'a str, default_port: u16) -> Result<Endpoints<'a>, RedisSetupError> {
        if rest.contains('?') {
            return Err(RedisSetupError::Url(
                "query parameters are not supported in redis+cluster/redis+sentinel URLs"
                    .to_string(),
            ));
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(at) => authority.split_at(at + 1),
            None => ("", authority),
        };
        let hosts = hosts
            .split(',')
            .map(|host| {
                // An IPv6 literal's port, if any, follows its closing bracket.
                let has_port = match host.strip_prefix('[') {
                    Some(v6) => v6.contains("]:"),
                    None => host.contains(':'),
                };
                if host.is_empty() {
                    Err(RedisSetupError::Url(
                        "an empty host in the host list".to_string(),
                    ))
                } else if has_port {
                    Ok(host.to_string())
                } else {
                    Ok(format!("{host}:{default_port}"))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Endpoints {
            userinfo,
            hosts,
            path,
        })
    }
}

/// A live connection of any of the three kinds; each is a cheap handle onto a shared one.
#[derive(Clone)]
enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(MultiplexedConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Standalone(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
            Connection::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Standalone(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
            Connection::Sentinel(c) => c.get_db(),
        }
    }
}

/// The nonces this replica issued, until they expire or it sees them consumed: an approximate
/// local view for the `countersign_nonces_outstanding` gauge (counting across replicas would
/// cost a scan of Redis).
struct IssuedNonces {
    cache: Cache<Key, Instant>,
    count: Arc<AtomicU64>,
}

struct UntilExpiry;

impl Expiry<Key, Instant> for UntilExpiry {
    fn expire_after_create(&self, _: &Key, expires: &Instant, _: Instant) -> Option<Duration> {
        Some(expires.saturating_duration_since(Instant::now()))
    }
}

impl IssuedNonces {
    fn new() -> IssuedNonces {
        let count = Arc::new(AtomicU64::new(0));
        let counter = count.clone();
        let cache = Cache::builder()
            .max_capacity(TRACKED_NONCES)
            .expire_after(UntilExpiry)
            .eviction_listener(move |_k, _v, _cause| {
                let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(1))
                });
            })
            .build();
        IssuedNonces { cache, count }
    }

    fn add(&self, nonce: Key, ttl: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.cache.insert(nonce, Instant::now() + ttl);
    }

    fn remove(&self, nonce: &Key) {
        self.cache.invalidate(nonce);
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// `countersign:<kind>:<hex digest>`.
fn redis_key(kind: &str, key: &Key) -> String {
    format!("countersign:{kind}:{}", hex::encode(key))
}

/// A TTL in whole milliseconds, at least 1 (`PX 0` is an error).
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Decodes an origin record, `"<unix> <network>"`.
fn parse_origin(held: &str) -> Option<(String, u64)> {
    let (at, network) = held.split_once(' ')?;
    Some((network.to_string(), at.parse().ok()?))
}

/// Decodes the take script's `=value` / empty encoding.
fn present(encoded: String) -> Option<String> {
    encoded.strip_prefix('=').map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_host_urls_split_into_hosts_credentials_and_path() {
        let e = Endpoints::parse("10.0.0.1:26379,10.0.0.2,[::1]/mymaster/2", 26379)
            .expect("valid host list");
        assert_eq!(e.userinfo, "");
        assert_eq!(e.hosts, ["10.0.0.1:26379", "10.0.0.2:26379", "[::1]:26379"]);
        assert_eq!(e.path, "mymaster/2");

        let e = Endpoints::parse("user:p@ss@a:7000,b:7001", 6379).expect("valid host list");
        assert_eq!(e.userinfo, "user:p@ss@");
        assert_eq!(e.hosts, ["a:7000", "b:7001"]);
        assert_eq!(e.path, "");

        assert!(Endpoints::parse("a:1,,b:2", 6379).is_err());
        assert!(Endpoints::parse("a:1?timeout=1", 6379).is_err());
    }

    #[test]
    fn every_url_kind_parses_without_connecting() {
        let t = Duration::from_millis(250);
        for url in [
            "redis://127.0.0.1:1",
            "redis://:secret@127.0.0.1:1/3",
            "redis+cluster://127.0.0.1:1,127.0.0.1:2",
            "redis+sentinel://127.0.0.1:1,127.0.0.1:2/mymaster",
            "redis+sentinel://:secret@127.0.0.1:1/mymaster/3",
        ] {
            assert!(Target::parse(url, t).is_ok(), "{url}");
        }
    }

    #[test]
    fn unusable_urls_are_refused_without_echoing_credentials() {
        let t = Duration::from_millis(250);
        for url in [
            "rediss://:hunter2@127.0.0.1:6380",
            "redis+cluster://:hunter2@127.0.0.1:1/3",
            "redis+sentinel://:hunter2@127.0.0.1:1",
            "redis+sentinel://:hunter2@127.0.0.1:1/",
            "redis://:hunter2@127.0.0.1:notaport",
        ] {
            let Err(e) = Target::parse(url, t) else {
                panic!("{url} should be refused");
            };
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn keys_are_namespaced_hex_digests_and_ttls_never_zero() {
        let key = super::super::key("jti", &[b"raw-jti"]);
        let name = redis_key("jti", &key);
        assert!(name.starts_with("countersign:jti:"));
        assert_eq!(name.len(), "countersign:jti:".len() + 64);
        assert!(!name.contains("raw-jti"));
        assert_eq!(millis(Duration::from_micros(10)), 1);
        assert_eq!(millis(Duration::from_secs(60)), 60_000);
    }
}
