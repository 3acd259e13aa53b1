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
