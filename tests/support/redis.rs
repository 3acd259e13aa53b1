//! Real Redis servers owned by a test: `redis-server` processes on free loopback ports with their
//! files in a temp dir, killed when dropped. A standalone server (which can be stopped and
//! restarted on the same port), a three-master Cluster, and a Sentinel watching a server.
#![allow(dead_code)]

use std::net::TcpListener;

use crate::support::free_port;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer after it was started.
const STARTUP: Duration = Duration::from_secs(10);

/// One `redis-server` process.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a standalone server and waits until it answers `PING`.
    pub fn start() -> RedisServer {
        RedisServer::start_with(free_port(), Vec::new())
    }

    fn start_with(port: u16, extra: Vec<String>) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir for redis-server");
        let mut server = RedisServer {
            port,
            dir,
            extra,
            child: None,
        };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the process (as a crash would) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the process (SIGSTOP): connections stay open and nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused process (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Starts the process again on the same port and waits until it answers `PING`.
    pub fn restart(&mut self) {
        self.stop();
        let mut args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &self.dir.path().display().to_string(),
            "--logfile",
            "redis.log",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.extra.iter().cloned());
        self.child = Some(spawn_redis(&args));
        wait_until(&format!("redis-server on port {}", self.port), || {
            query::<String>(&self.url(), &redis::cmd("PING")).is_ok_and(|p| p == "PONG")
        });
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A paused process dies of SIGKILL too.
        self.stop();
    }
}

/// Three masters, no replicas, every slot assigned.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers, joins them with `redis-cli --cluster create` and
    /// waits for `cluster_state:ok` on each.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                // The cluster bus listens on port + 10000: find a pair that is free.
                let port = free_port_with_bus();
                RedisServer::start_with(
                    port,
                    vec![
                        "--cluster-enabled".into(),
                        "yes".into(),
                        "--cluster-config-file".into(),
                        format!("nodes-{port}.conf"),
                        "--cluster-node-timeout".into(),
                        "5000".into(),
                    ],
                )
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("redis-cli --cluster create: {e}; {INSTALL}"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for node in &nodes {
            wait_until(&format!("cluster_state:ok on port {}", node.port), || {
                query::<String>(&node.url(), redis::cmd("CLUSTER").arg("INFO"))
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            });
        }
        RedisCluster { nodes }
    }

    /// `redis+cluster://127.0.0.1:a,127.0.0.1:b,127.0.0.1:c`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Each node's own `redis://` URL, to inspect what it holds.
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// A Sentinel watching one server as master `mymaster`.
pub struct RedisSentinel {
    pub master: RedisServer,
    sentinel: RedisServer,
}

impl RedisSentinel {
    /// Starts a server and a sentinel that monitors it.
    pub fn start() -> RedisSentinel {
        let master = RedisServer::start();
        let dir = tempfile::tempdir().expect("temp dir for redis-sentinel");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nlogfile sentinel.log\n\
                 sentinel monitor mymaster 127.0.0.1 {} 1\n",
                dir.path().display(),
                master.port
            ),
        )
        .expect("write sentinel.conf");
        let child = spawn_redis(&[conf.display().to_string(), "--sentinel".to_string()]);
        let sentinel = RedisServer {
            port,
            dir,
            extra: Vec::new(),
            child: Some(child),
        };
        wait_until(&format!("sentinel on port {port}"), || {
            query::<Vec<String>>(
                &sentinel.url(),
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg("mymaster"),
            )
            .is_ok_and(|addr| addr.len() == 2)
        });
        RedisSentinel { master, sentinel }
    }

    /// `redis+sentinel://127.0.0.1:<sentinel>/mymaster`.
    pub fn url(&self) -> String {
        format!("redis+sentinel://127.0.0.1:{}/mymaster", self.sentinel.port)
    }
}

const INSTALL: &str = "the Redis tests run against real servers: apt-get install redis-server";

fn spawn_redis(args: &[String]) -> Child {
    Command::new("redis-server")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run redis-server ({e}): {INSTALL}"))
}

/// Runs one command on a fresh connection.
pub fn query<T: redis::FromRedisValue>(url: &str, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(url)?;
    let mut con = client.get_connection_with_timeout(Duration::from_secs(1))?;
    cmd.query(&mut con)
}

/// Every key on the server at `url` matching `pattern`.
pub fn keys(url: &str, pattern: &str) -> Vec<String> {
    let mut cursor = 0u64;
    let mut all = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = query(
            url,
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000),
        )
        .expect("SCAN");
        all.extend(batch);
        if next == 0 {
            return all;
        }
        cursor = next;
    }
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < STARTUP,
            "{what} not ready after {STARTUP:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A free port whose cluster bus port (port + 10000) is free too.
fn free_port_with_bus() -> u16 {
    loop {
        let port = free_port();
        if port <= 55535 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}
