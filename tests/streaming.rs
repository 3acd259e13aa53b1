//! Low-risk routes stream: a body far larger than any buffer goes through without the gateway's
//! memory growing with it. Alone in its binary so the process RSS belongs to this test.

mod support;

use sha2::{Digest, Sha256};
use support::{Gateway, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONFIG: &str = r#"
upstreams: { legacy: { address: "{upstream}" } }
session: { kind: header, header: x-session }
routes:
  - name: upload
    match: { path: "/{*rest}" }
    upstream: legacy
    risk: low
"#;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_upload_streams_through_without_growing_memory() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(CONFIG, &upstream).await;
    const TOTAL: usize = 256 * 1024 * 1024;
    let chunk = vec![0x5au8; 256 * 1024];
    let before = rss_kib();

    let mut stream = TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .expect("connect");
    let head = format!("POST /upload HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {TOTAL}\r\nconnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("head");
    let mut hasher = Sha256::new();
    let mut sent = 0;
    let mut peak = before;
    while sent < TOTAL {
        stream.write_all(&chunk).await.expect("body chunk");
        hasher.update(&chunk);
        sent += chunk.len();
        if sent % (16 * 1024 * 1024) == 0 {
            peak = peak.max(rss_kib());
        }
    }
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("response");
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "got {text}");

    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_len, TOTAL);
    assert_eq!(seen[0].body_sha256, <[u8; 32]>::from(hasher.finalize()));
    let growth_mib = peak.saturating_sub(before) / 1024;
    println!(
        "RSS before {} MiB, peak during upload {} MiB, growth {growth_mib} MiB",
        before / 1024,
        peak / 1024
    );
    assert!(
        growth_mib < 64,
        "memory grew by {growth_mib} MiB while streaming 256 MiB"
    );
}
