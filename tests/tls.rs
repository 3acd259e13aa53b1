//! TLS upstreams: the gateway connects with TLS and SNI, verifies the certificate against
//! `upstream_ca_file`, and refuses (502) an upstream it cannot verify. Both forwarding paths
//! (streamed low-risk and buffered confirmed) are exercised.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use countersign::alg::ProofAlg;
use countersign::tools::device_key::DeviceKey;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use support::{send, Gateway};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// An HTTPS upstream for `localhost` with a fresh self-signed certificate; returns its address
/// and the certificate in PEM.
async fn https_upstream() -> (SocketAddr, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let pem = cert.cert.pem();
    let chain = vec![CertificateDer::from(cert.cert.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let who = req
                        .headers()
                        .get("countersign-device")
                        .map_or("-".to_string(), |v| v.to_str().unwrap_or("?").to_string());
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                        "tls {} {} device={who}",
                        req.method(),
                        req.uri()
                    )))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, pem)
}

const ROUTES: &str = r#"
session: { kind: cookie, cookie: sid }
routes:
  - name: delete-user
    match: { methods: [DELETE], path: "/api/users/{id}" }
    upstream: secure
    risk: high
  - name: default
    match: { path: "/{*rest}" }
    upstream: secure
    risk: low
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_upstream_verified_by_the_configured_ca_serves_both_paths() {
    let (addr, pem) = https_upstream().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).expect("write CA");
    let body = format!(
        "upstreams: {{ secure: {{ address: \"{{upstream}}\", tls: true, sni: localhost }} }}\nupstream_ca_file: \"{}\"\n{ROUTES}",
        ca.display()
    );
    let gw = Gateway::start_at(&body, addr).await;

    let low = send(&format!("{}/api/users", gw.base), "GET", &[], Bytes::new()).await;
    assert_eq!(low.status, 200);
    assert_eq!(low.body, Bytes::from_static(b"tls GET /api/users device=-"));

    let url = format!("{}/api/users/42", gw.base);
    let cookie = [("cookie", "sid=tls-session")];
    let challenge = send(&url, "DELETE", &cookie, Bytes::new()).await;
    let nonce = challenge.header("dpop-nonce").expect("nonce").to_string();
    let key = DeviceKey::generate(ProofAlg::EdDsa).expect("key");
    let proof = key.proof("DELETE", &url, Some(&nonce), Some("tls-session"));
    let confirmed = send(&url, "DELETE", &[cookie[0], ("dpop", &proof)], Bytes::new()).await;
    assert_eq!(confirmed.status, 200);
    let expected = format!("tls DELETE /api/users/42 device={}", key.jkt());
    assert_eq!(confirmed.body, Bytes::from(expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_upstream_that_cannot_be_verified_is_a_502() {
    let (addr, _pem) = https_upstream().await;
    let body = format!(
        "upstreams: {{ secure: {{ address: \"{{upstream}}\", tls: true, sni: localhost }} }}\n{ROUTES}"
    );
    let gw = Gateway::start_at(&body, addr).await;
    let r = send(&format!("{}/api/users", gw.base), "GET", &[], Bytes::new()).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "bad_gateway");
}

#[test]
fn an_unusable_ca_bundle_stops_the_start_with_its_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate").expect("write");
    let yaml = format!(
        "listen: \"127.0.0.1:{}\"\nupstreams: {{ secure: {{ address: \"127.0.0.1:9\", tls: true }} }}\nupstream_ca_file: \"{}\"\n{ROUTES}",
        support::free_port(),
        ca.display()
    );
    let config =
        countersign::config::parse(&yaml, std::path::Path::new("tls.yaml")).expect("parses");
    let err = countersign::server::assemble(config, countersign::server::Runtime::Shared)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("upstream_ca_file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_confirmation_origin_can_have_a_tls_listener_of_its_own() {
    let upstream = support::Upstream::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let (cert_path, key_path) = (
        dir.path().join("confirm.pem"),
        dir.path().join("confirm.key"),
    );
    std::fs::write(&cert_path, cert.cert.pem()).expect("cert file");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("key file");
    let own = support::free_port();
    let yaml = format!(
        "public_origin: \"http://127.0.0.1:{{port}}\"\nbrowser:\n  origin: \"https://localhost:{own}\"\n  listen: \"127.0.0.1:{own}\"\n  tls: {{ cert: \"{}\", key: \"{}\" }}\nupstreams: {{ app: {{ address: \"{{upstream}}\" }} }}\nsession: {{ kind: cookie, cookie: sid }}\nroutes:\n  - {{ name: all, match: {{ path: \"/{{*rest}}\" }}, upstream: app, risk: low }}\n",
        cert_path.display(),
        key_path.display()
    );
    let _gateway = Gateway::start(&yaml, &upstream).await;

    // A browser trusting the certificate gets the confirmation origin's own script over TLS.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.cert.der().to_vec()))
        .expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", own))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await
        .expect("the listener speaks TLS with the configured certificate");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let request = Request::get("/confirm/app.js")
        .header("host", format!("localhost:{own}"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let reply = sender.send_request(request).await.expect("response");
    assert_eq!(reply.status(), 200);
    let javascript = reply
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/javascript"));
    assert!(javascript);
    // Plain HTTP is not served there: the answer, if any, is no HTTP response.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", own))
        .await
        .expect("connect");
    plain
        .write_all(b"GET /confirm/app.js HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let read = plain.read_to_end(&mut answer);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), read).await;
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
    assert_eq!(upstream.count(), 0, "nothing reached the app");
}

#[test]
fn a_tls_listener_needs_its_own_listen_address_and_an_https_origin() {
    let base = "listen: \"127.0.0.1:8080\"\npublic_origin: \"http://127.0.0.1:8080\"\nupstreams: { app: { address: \"127.0.0.1:9000\" } }\nsession: { kind: cookie, cookie: sid }\nroutes:\n  - { name: all, match: { path: \"/{*rest}\" }, upstream: app, risk: low }\n";
    let parse = |browser: &str| {
        countersign::config::parse(&format!("{base}{browser}"), std::path::Path::new("t.yaml"))
    };
    let tls = "  tls: { cert: c.pem, key: k.pem }\n";
    let err = parse(&format!(
        "browser:\n  origin: \"https://localhost:8443\"\n{tls}"
    ))
    .expect_err("tls without listen");
    assert_eq!(err.path, "browser.tls");
    assert!(
        err.message.contains("needs browser.listen"),
        "{}",
        err.message
    );
    let err = parse(&format!(
        "browser:\n  origin: \"http://localhost:8443\"\n  listen: \"127.0.0.1:8443\"\n{tls}"
    ))
    .expect_err("tls with an http origin");
    assert!(err.message.contains("https://"), "{}", err.message);
    parse(&format!(
        "browser:\n  origin: \"https://localhost:8443\"\n  listen: \"127.0.0.1:8443\"\n{tls}"
    ))
    .expect("tls on its own listener");
}
