//! The gateway foundation end to end: routing, passthrough, header hygiene, forwarding headers,
//! Location rewriting and the JSON errors the gateway makes itself.

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper::Response;
use hyper_util::rt::TokioIo;
use support::{free_port, send, Gateway, Upstream};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

const CONFIG: &str = r#"
upstreams:
  legacy: { address: "{upstream}", read_timeout: 1s }
  down: { address: "127.0.0.1:DOWNPORT" }
trusted_proxies: ["10.0.0.0/8"]
session: { kind: header, header: x-session }
routes:
  - name: delete-user
    match: { methods: [DELETE], path: "/api/users/{id}" }
    upstream: legacy
    risk: high
  - name: gone
    match: { path: "/gone/{*rest}" }
    upstream: down
    risk: low
  - name: api
    match: { path: "/api/{*rest}" }
    upstream: legacy
    risk: low
  - name: redirects
    match: { path: "/redirect/{*rest}" }
    upstream: legacy
    risk: low
  - name: slow
    match: { methods: [GET], path: "/slow" }
    upstream: legacy
    risk: low
"#;

async fn world() -> (Gateway, Upstream) {
    let upstream = Upstream::start().await;
    let config = CONFIG.replace("DOWNPORT", &free_port().to_string());
    let gw = Gateway::start(&config, &upstream).await;
    (gw, upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_risk_requests_pass_through_with_method_path_query_headers_and_body() {
    let (gw, upstream) = world().await;
    let body = Bytes::from_static(b"{\"name\":\"alice\"}");
    let r = send(
        &format!("{}/api/users?page=2&sort=name", gw.base),
        "PUT",
        &[("x-custom", "kept"), ("content-type", "application/json")],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.header("countersign-request-id").is_some());
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "PUT");
    assert_eq!(seen[0].uri, "/api/users?page=2&sort=name");
    assert_eq!(seen[0].headers["x-custom"], "kept");
    assert_eq!(seen[0].body_len, body.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sent_provenance_dpop_and_hop_by_hop_headers_never_arrive() {
    let (gw, upstream) = world().await;
    let r = send(
        &format!("{}/api/x", gw.base),
        "GET",
        &[
            ("countersign-subject", "admin"),
            ("countersign-confirmation-id", "forged"),
            ("dpop", "eyJ.forged.proof"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "secret"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = &upstream.seen()[0];
    for name in [
        "countersign-subject",
        "countersign-confirmation-id",
        "dpop",
        "x-private",
        "keep-alive",
        "te",
        "proxy-authorization",
    ] {
        assert!(
            !seen.headers.contains_key(name),
            "{name} reached the upstream"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_headers_are_replaced_for_an_untrusted_peer() {
    let (gw, upstream) = world().await;
    let host = format!("127.0.0.1:{}", gw.port);
    send(
        &format!("{}/api/x", gw.base),
        "GET",
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ],
        Bytes::new(),
    )
    .await;
    let seen = &upstream.seen()[0];
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], host.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_is_appended_for_a_trusted_peer() {
    let upstream = Upstream::start().await;
    let config = CONFIG
        .replace("DOWNPORT", &free_port().to_string())
        .replace("10.0.0.0/8", "127.0.0.1/32");
    let gw = Gateway::start(&config, &upstream).await;
    send(
        &format!("{}/api/x", gw.base),
        "GET",
        &[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "admin.example"),
        ],
        Bytes::new(),
    )
    .await;
    let seen = &upstream.seen()[0];
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-host"], "admin.example");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn location_on_the_upstream_origin_is_rewritten_to_the_public_origin() {
    let (gw, upstream) = world().await;
    let r = send(
        &format!("{}/redirect/users?deleted=42", gw.base),
        "POST",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 303);
    let expected = format!("{}/done/users", gw.base);
    assert_eq!(r.header("location"), Some(expected.as_str()));
    assert_eq!(
        r.header("content-location"),
        Some(format!("{}/here", gw.base).as_str())
    );
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_requests_get_a_json_404_and_are_not_forwarded() {
    let (gw, upstream) = world().await;
    let r = send(&format!("{}/nowhere", gw.base), "GET", &[], Bytes::new()).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not_found");
    assert!(r.json()["error_description"].is_string());
    assert_eq!(r.header("content-type"), Some("application/json"));
    // A high route's method list is part of the match too.
    let r = send(
        &format!("{}/api/users/42", gw.base),
        "PATCH",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200, "PATCH falls through to the low api route");
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_a_json_502() {
    let (gw, _upstream) = world().await;
    let r = send(&format!("{}/gone/x", gw.base), "GET", &[], Bytes::new()).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "bad_gateway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_timeout_is_a_json_504() {
    let (gw, _upstream) = world().await;
    let r = send(&format!("{}/slow", gw.base), "GET", &[], Bytes::new()).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "upstream_timeout");
}

/// A low-risk route in front of an upstream that answers slowly.
const HELD_CONFIG: &str = r#"
upstreams: { legacy: { address: "{upstream}", read_timeout: 30s } }
session: { kind: header, header: x-session }
routes:
  - name: download
    match: { methods: [GET], path: "/{*rest}" }
    upstream: legacy
    risk: low
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_responses_stream_back_intact() {
    // The upstream sends its first chunk, then holds the rest of the body until the test says
    // so: a gateway that buffered the response would deliver nothing while it waits.
    const FIRST: usize = 64 * 1024;
    const REST: usize = 8 * 1024 * 1024 + 7;
    let (release, released) = oneshot::channel::<()>();
    let released = Arc::new(Mutex::new(Some(released)));
    let upstream = Upstream::start_with(move |_, _| {
        let released = released.lock().expect("release lock").take();
        async move {
            let (tx, rx) = mpsc::channel::<Bytes>(4);
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from(vec![b'a'; FIRST])).await;
                if let Some(released) = released {
                    let _ = released.await;
                }
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                let mut left = REST;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if tx.send(chunk.slice(..n)).await.is_err() {
                        return;
                    }
                    left -= n;
                }
            });
            let frames = futures_util::stream::unfold(rx, |mut rx| async move {
                let data = rx.recv().await?;
                Some((Ok::<_, Infallible>(Frame::data(data)), rx))
            });
            Response::new(BodyExt::boxed(StreamBody::new(frames)))
        }
    })
    .await;
    let gw = Gateway::start(HELD_CONFIG, &upstream).await;

    let stream = TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let request = hyper::Request::get("/download")
        .header("host", format!("127.0.0.1:{}", gw.port))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response head");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = Vec::new();

    // The first chunk arrives while the upstream is still holding the rest back. The deadline
    // only bounds a failure; a streaming gateway passes as soon as the bytes are through.
    let first = tokio::time::timeout(Duration::from_secs(30), async {
        while received.len() < FIRST {
            match body.frame().await {
                Some(Ok(frame)) => {
                    received.extend_from_slice(frame.data_ref().map_or(&[][..], |d| d))
                }
                other => panic!("the body ended early: {other:?}"),
            }
        }
    })
    .await;
    assert!(
        first.is_ok(),
        "the gateway held back the first {FIRST} bytes while the upstream was still sending: it \
         buffers responses instead of streaming them (got {} bytes)",
        received.len()
    );
    assert_eq!(received.len(), FIRST, "no more than the upstream has sent");
    assert!(received.iter().all(|&b| b == b'a'));

    release
        .send(())
        .expect("the upstream is waiting for the release");
    let rest = body
        .collect()
        .await
        .expect("the rest of the body")
        .to_bytes();
    assert_eq!(rest.len(), REST, "the whole body arrives");
    assert!(rest.iter().all(|&b| b == b'x'), "intact");
    assert_eq!(upstream.count(), 1);
}
