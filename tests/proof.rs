//! DPoP proof verification through the public API: every algorithm, every refusal of RFC 9449 §4.3
//! with the contract's reason, and property tests that no input panics or verifies by accident.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use countersign::alg::ProofAlg;
use countersign::htu;
use countersign::proof::{self, ProofCheck, VerifiedProof, MAX_JTI_LEN};
use countersign::reason::Reason;
use countersign::tools::device_key::DeviceKey;
use proptest::prelude::*;
use serde_json::{json, Value};

const URL: &str = "https://admin.example.com/api/users/7";
const NOW: i64 = 1_700_000_000;
const CREDENTIAL: &str = "session-token";

fn key(alg: ProofAlg) -> &'static DeviceKey {
    static KEYS: OnceLock<Vec<DeviceKey>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        ProofAlg::ALL
            .iter()
            .map(|&alg| DeviceKey::generate(alg).expect("key generation works on this platform"))
            .collect()
    });
    let index = ProofAlg::ALL
        .iter()
        .position(|&a| a == alg)
        .expect("ALL lists every algorithm");
    &keys[index]
}

fn check(algs: &[ProofAlg]) -> ProofCheck<'_> {
    ProofCheck {
        algs,
        method: "DELETE",
        htu: URL,
        now: NOW,
        max_age: Duration::from_secs(60),
        clock_skew: Duration::from_secs(5),
    }
}

fn header(key: &DeviceKey) -> Value {
    json!({"typ": "dpop+jwt", "alg": key.alg().as_str(), "jwk": key.public_jwk()})
}

fn claims() -> Value {
    json!({"jti": "0b2b6a6e-41c8", "htm": "DELETE", "htu": URL, "iat": NOW, "nonce": "n-1", "ath": countersign::session::ath(CREDENTIAL)})
}

fn verify_with(proof: &str, algs: &[ProofAlg]) -> Result<VerifiedProof, Reason> {
    proof::verify(&[proof.as_bytes()], &check(algs))
}

/// Signs `claims` with the ES256 key and verifies it with ES256 enabled.
fn es256_claims(claims: &Value) -> Result<VerifiedProof, Reason> {
    let key = key(ProofAlg::Es256);
    verify_with(&key.sign_jws(&header(key), claims), &[ProofAlg::Es256])
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn segments(proof: &str) -> [String; 3] {
    let mut parts = proof.split('.').map(str::to_owned);
    [(); 3].map(|()| parts.next().expect("a compact JWS has three segments"))
}

#[test]
fn every_algorithm_verifies_with_its_jkt() {
    let now = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
    .expect("the clock fits in i64");
    for alg in ProofAlg::ALL {
        let key = key(alg);
        let proof = key.proof("DELETE", URL, Some("nonce-1"), Some(CREDENTIAL));
        let verified = proof::verify(
            &[proof.as_bytes()],
            &ProofCheck {
                now,
                ..check(&[alg])
            },
        )
        .unwrap_or_else(|reason| panic!("{alg:?}: {reason:?}"));
        assert_eq!(verified.jkt, key.jkt(), "{alg:?}");
        assert_eq!(verified.nonce.as_deref(), Some("nonce-1"));
        assert!(verified.ath_matches(&countersign::session::ath(CREDENTIAL)));
        // Signed at or just after `now` (RSA key generation can cross a second boundary).
        assert!(
            (now..=now + 5).contains(&verified.iat),
            "{alg:?}: iat {}",
            verified.iat
        );
        // A proof is accepted only by its own algorithm.
        let others: Vec<ProofAlg> = ProofAlg::ALL.into_iter().filter(|&a| a != alg).collect();
        assert_eq!(
            proof::verify(
                &[proof.as_bytes()],
                &ProofCheck {
                    now,
                    ..check(&others)
                }
            ),
            Err(Reason::BadAlg),
            "{alg:?}"
        );
    }
}

#[test]
fn a_proof_without_a_nonce_verifies_with_none() {
    let mut c = claims();
    c.as_object_mut()
        .expect("claims are an object")
        .remove("nonce");
    assert_eq!(es256_claims(&c).map(|p| p.nonce), Ok(None));
}

#[test]
fn alg_none_is_refused() {
    let key = key(ProofAlg::Es256);
    let h = json!({"typ": "dpop+jwt", "alg": "none", "jwk": key.public_jwk()});
    let [header_b64, payload_b64, _] = segments(&key.sign_jws(&h, &claims()));
    for proof in [
        format!("{header_b64}.{payload_b64}."),
        format!("{header_b64}.{payload_b64}"),
    ] {
        let expected = if proof.ends_with('.') {
            Reason::BadAlg
        } else {
            Reason::Malformed
        };
        assert_eq!(
            verify_with(&proof, &ProofAlg::ALL),
            Err(expected),
            "{proof}"
        );
    }
    for alg in ["None", "NONE", ""] {
        let h = json!({"typ": "dpop+jwt", "alg": alg, "jwk": key.public_jwk()});
        assert_eq!(
            verify_with(&key.sign_jws(&h, &claims()), &ProofAlg::ALL),
            Err(Reason::BadAlg)
        );
    }
}

#[test]
fn hmac_signed_with_the_public_key_is_refused() {
    // The classic key-confusion attack: HS256 keyed with bytes the verifier treats as a public key.
    for alg in [ProofAlg::Es256, ProofAlg::Rs256, ProofAlg::EdDsa] {
        let key = key(alg);
        let jwk = key.public_jwk();
        for (hs, hmac_alg) in [
            ("HS256", hmac::HMAC_SHA256),
            ("HS384", hmac::HMAC_SHA384),
            ("HS512", hmac::HMAC_SHA512),
        ] {
            let h = json!({"typ": "dpop+jwt", "alg": hs, "jwk": jwk});
            let input = format!("{}.{}", b64(h.to_string()), b64(claims().to_string()));
            for secret in [jwk.to_string().into_bytes(), key.jkt().into_bytes()] {
                let tag = hmac::sign(&hmac::Key::new(hmac_alg, &secret), input.as_bytes());
                let proof = format!("{input}.{}", b64(tag.as_ref()));
                assert_eq!(
                    verify_with(&proof, &ProofAlg::ALL),
                    Err(Reason::BadAlg),
                    "{alg:?} {hs}"
                );
            }
        }
    }
}

#[test]
fn unknown_and_non_string_algs_are_refused() {
    let key = key(ProofAlg::Es256);
    for alg in [
        json!("ES512"),
        json!("RS512"),
        json!("PS384"),
        json!("es256"),
        json!(null),
        json!(256),
        json!(["ES256"]),
    ] {
        let h = json!({"typ": "dpop+jwt", "alg": alg, "jwk": key.public_jwk()});
        assert_eq!(
            verify_with(&key.sign_jws(&h, &claims()), &ProofAlg::ALL),
            Err(Reason::BadAlg),
            "{alg}"
        );
    }
    let h = json!({"typ": "dpop+jwt", "jwk": key.public_jwk()});
    assert_eq!(
        verify_with(&key.sign_jws(&h, &claims()), &ProofAlg::ALL),
        Err(Reason::BadAlg)
    );
}

#[test]
fn private_jwk_is_refused() {
    let key = key(ProofAlg::Es256);
    let mut h = header(key);
    // Any value: the member alone marks the key as private.
    h["jwk"]["d"] = json!(b64([7u8; 32]));
    assert_eq!(
        verify_with(&key.sign_jws(&h, &claims()), &[ProofAlg::Es256]),
        Err(Reason::BadJwk)
    );
    let rsa = self::key(ProofAlg::Rs256);
    for member in ["d", "p", "q", "dp", "dq", "qi", "oth"] {
        let mut h = header(rsa);
        h["jwk"][member] = json!("AQAB");
        assert_eq!(
            verify_with(&rsa.sign_jws(&h, &claims()), &[ProofAlg::Rs256]),
            Err(Reason::BadJwk),
            "{member}"
        );
    }
}

#[test]
fn oct_jwk_is_refused() {
    let key = key(ProofAlg::Es256);
    for alg in ["ES256", "HS256"] {
        let h = json!({"typ": "dpop+jwt", "alg": alg, "jwk": {"kty": "oct", "k": b64(b"shared secret")}});
        let expected = if alg == "ES256" {
            Reason::BadJwk
        } else {
            Reason::BadAlg
        };
        assert_eq!(
            verify_with(&key.sign_jws(&h, &claims()), &[ProofAlg::Es256]),
            Err(expected),
            "{alg}"
        );
    }
}

#[test]
fn key_references_are_refused() {
    let key = key(ProofAlg::Es256);
    let references = [
        ("jku", json!("https://attacker.example/jwks.json")),
        ("x5u", json!("https://attacker.example/cert.pem")),
        ("x5c", json!(["MIIB"])),
        ("kid", json!("device-1")),
    ];
    for (name, value) in &references {
        // Without a jwk.
        let h = json!({"typ": "dpop+jwt", "alg": "ES256", name.to_string(): value});
        assert_eq!(
            verify_with(&key.sign_jws(&h, &claims()), &[ProofAlg::Es256]),
            Err(Reason::BadJwk),
            "{name}"
        );
        // Alongside the jwk.
        let mut h = header(key);
        h[*name] = value.clone();
        assert_eq!(
            verify_with(&key.sign_jws(&h, &claims()), &[ProofAlg::Es256]),
            Err(Reason::BadJwk),
            "{name}+jwk"
        );
    }
}

#[test]
fn missing_or_non_object_jwk_is_refused() {
    let key = key(ProofAlg::Es256);
    for jwk in [
        None,
        Some(json!(null)),
        Some(json!("eyJrdHkiOiJFQyJ9")),
        Some(json!([key.public_jwk()])),
    ] {
        let mut h = json!({"typ": "dpop+jwt", "alg": "ES256"});
        if let Some(jwk) = &jwk {
            h["jwk"] = jwk.clone();
        }
        assert_eq!(
            verify_with(&key.sign_jws(&h, &claims()), &[ProofAlg::Es256]),
            Err(Reason::BadJwk),
            "{jwk:?}"
        );
    }
}

#[test]
fn a_signature_by_another_key_is_refused() {
    for alg in ProofAlg::ALL {
        let victim = key(alg);
        let attacker = DeviceKey::generate(alg).expect("key generation works on this platform");
        let proof = attacker.sign_jws(&header(victim), &claims());
        assert_eq!(
            verify_with(&proof, &[alg]),
            Err(Reason::BadSignature),
            "{alg:?}"
        );
    }
}

#[test]
fn rs256_and_ps256_signatures_are_not_interchangeable() {
    let rs = key(ProofAlg::Rs256);
    let mut h = header(rs);
    h["alg"] = json!("PS256");
    assert_eq!(
        verify_with(&rs.sign_jws(&h, &claims()), &[ProofAlg::Ps256]),
        Err(Reason::BadSignature)
    );
}

#[test]
fn a_tampered_payload_is_refused() {
    let key = key(ProofAlg::EdDsa);
    let [h, _, signature] = segments(&key.sign_jws(&header(key), &claims()));
    let mut forged = claims();
    forged["htm"] = json!("GET");
    let proof = format!("{h}.{}.{signature}", b64(forged.to_string()));
    assert_eq!(
        verify_with(&proof, &[ProofAlg::EdDsa]),
        Err(Reason::BadSignature)
    );
}

#[test]
fn typ_must_be_dpop_jwt() {
    let key = key(ProofAlg::Es256);
    for typ in [
        None,
        Some(json!("JWT")),
        Some(json!("at+jwt")),
        Some(json!("DPOP+JWT")),
        Some(json!("application/dpop+jwt")),
        Some(json!(1)),
    ] {
        let mut h = json!({"alg": "ES256", "jwk": key.public_jwk()});
        if let Some(typ) = &typ {
            h["typ"] = typ.clone();
        }
        assert_eq!(
            verify_with(&key.sign_jws(&h, &claims()), &[ProofAlg::Es256]),
            Err(Reason::BadTyp),
            "{typ:?}"
        );
    }
}

#[test]
fn iat_outside_the_window_is_stale() {
    let at = |iat: i64| {
        let mut c = claims();
        c["iat"] = json!(iat);
        es256_claims(&c).map(|p| p.iat)
    };
    assert_eq!(at(NOW - 61), Err(Reason::StaleProof));
    assert_eq!(at(NOW - 3600), Err(Reason::StaleProof));
    assert_eq!(at(NOW + 6), Err(Reason::StaleProof));
    assert_eq!(at(NOW + 3600), Err(Reason::StaleProof));
    // Inside the window, including the clock-skew allowance.
    for iat in [NOW - 60, NOW - 30, NOW, NOW + 1, NOW + 5] {
        assert_eq!(at(iat), Ok(iat));
    }
}

#[test]
fn htu_is_compared_after_normalisation() {
    let with = |htu: &str| {
        let mut c = claims();
        c["htu"] = json!(htu);
        es256_claims(&c).map(|_| ())
    };
    for equal in [
        "https://admin.example.com/api/users/7",
        "HTTPS://ADMIN.Example.COM/api/users/7",
        "https://admin.example.com:443/api/users/7",
        "https://admin.example.com:/api/users/7",
        "https://admin.example.com/api/./users/x/../7",
        "https://admin.example.com/%61pi/users/%37",
        "https://admin.example.com/api/users/7?id=7&confirm=1",
        "https://admin.example.com/api/users/7#top",
        "https://admin.example.com/api/users/7?a=b#c",
    ] {
        assert_eq!(with(equal), Ok(()), "{equal}");
    }
    for different in [
        "https://evil.example.com/api/users/7",
        "https://admin.example.com.evil.example/api/users/7",
        "http://admin.example.com/api/users/7",
        "https://admin.example.com:8443/api/users/7",
        "https://admin.example.com/api/users/8",
        "https://admin.example.com/api/users/7/",
        "https://admin.example.com/API/users/7",
        "https://admin.example.com/api/users%2F7",
        "https://user@admin.example.com/api/users/7",
        "/api/users/7",
        "admin.example.com/api/users/7",
        "",
    ] {
        assert_eq!(with(different), Err(Reason::HtuMismatch), "{different}");
    }
}

#[test]
fn the_gateway_side_normalises_the_same_way() {
    let external =
        htu::normalize("HTTPS://Admin.Example.com:443/api/users/7").expect("a valid URI");
    let key = key(ProofAlg::EdDsa);
    let proof = key.sign_jws(&header(key), &claims());
    let check = ProofCheck {
        htu: &external,
        ..check(&[ProofAlg::EdDsa])
    };
    assert!(proof::verify(&[proof.as_bytes()], &check).is_ok());
}

#[test]
fn htm_must_match_exactly() {
    for htm in ["GET", "delete", "Delete", "DELETE ", "POST"] {
        let mut c = claims();
        c["htm"] = json!(htm);
        assert_eq!(
            es256_claims(&c).map(|_| ()),
            Err(Reason::HtmMismatch),
            "{htm}"
        );
    }
}

#[test]
fn jti_longer_than_256_bytes_is_refused() {
    let mut c = claims();
    c["jti"] = json!("j".repeat(MAX_JTI_LEN + 1));
    assert_eq!(es256_claims(&c).map(|_| ()), Err(Reason::MissingClaim));
    c["jti"] = json!("é".repeat(MAX_JTI_LEN / 2 + 1));
    assert_eq!(es256_claims(&c).map(|_| ()), Err(Reason::MissingClaim));
    c["jti"] = json!("j".repeat(MAX_JTI_LEN));
    assert!(es256_claims(&c).is_ok());
}

#[test]
fn each_required_claim_is_required() {
    for name in ["jti", "htm", "htu", "iat", "ath"] {
        let mut c = claims();
        c.as_object_mut()
            .expect("claims are an object")
            .remove(name);
        let missing = if name == "ath" {
            Reason::AthMissing
        } else {
            Reason::MissingClaim
        };
        assert_eq!(es256_claims(&c).map(|_| ()), Err(missing), "without {name}");
        c[name] = json!(null);
        assert_eq!(es256_claims(&c).map(|_| ()), Err(missing), "{name}: null");
    }
}

#[test]
fn claims_of_the_wrong_type_are_refused() {
    let cases = [
        ("jti", json!(42)),
        ("jti", json!("")),
        ("htm", json!(["DELETE"])),
        ("htu", json!({"href": URL})),
        ("iat", json!("1700000000")),
        ("iat", json!(1_700_000_000.5)),
        ("iat", json!(1_700_000_000.0)),
        ("ath", json!(true)),
        ("nonce", json!(1)),
        ("nonce", json!(null)),
        ("nonce", json!(["n-1"])),
    ];
    for (name, value) in cases {
        let mut c = claims();
        c[name] = value.clone();
        assert_eq!(
            es256_claims(&c).map(|_| ()).map_err(Reason::as_str),
            Err("missing_claim"),
            "{name}: {value}"
        );
    }
}

#[test]
fn exactly_one_dpop_header() {
    let key = key(ProofAlg::Es256);
    let proof = key.sign_jws(&header(key), &claims());
    let check = check(&[ProofAlg::Es256]);
    assert!(proof::verify(&[proof.as_bytes()], &check).is_ok());
    assert_eq!(
        proof::verify(&[proof.as_bytes(), proof.as_bytes()], &check),
        Err(Reason::Malformed)
    );
    assert_eq!(
        proof::verify(&[proof.as_bytes(), b""], &check),
        Err(Reason::Malformed)
    );
    assert_eq!(proof::verify(&[], &check), Err(Reason::Malformed));
    // Two proofs folded into one value.
    let folded = format!("{proof}, {proof}");
    assert_eq!(
        proof::verify(&[folded.as_bytes()], &check),
        Err(Reason::Malformed)
    );
}

#[test]
fn malformed_header_and_payload_segments() {
    let key = key(ProofAlg::Es256);
    let [h, p, s] = segments(&key.sign_jws(&header(key), &claims()));
    let bad_segments = [
        "".to_owned(),
        "A".to_owned(),               // impossible base64 length
        format!("{h}="),              // padding
        "e30=".to_owned(),            // padded `{}`
        b64("{\"typ\":\"dpop+jwt\""), // truncated JSON
        b64("not json"),
        b64("[\"typ\",\"dpop+jwt\"]"), // JSON, but not an object
        b64("\"dpop+jwt\""),
        b64("null"),
        b64([0xff, 0xfe, 0x7b, 0x7d]), // not UTF-8
        "e30*".to_owned(),             // outside the alphabet
        "eyJ0eXAiOiJk cG9wK2p3dCJ9".to_owned(),
    ];
    for bad in &bad_segments {
        assert_eq!(
            verify_with(&format!("{bad}.{p}.{s}"), &[ProofAlg::Es256]),
            Err(Reason::Malformed),
            "header {bad:?}"
        );
        assert_eq!(
            verify_with(&format!("{h}.{bad}.{s}"), &[ProofAlg::Es256]),
            Err(Reason::Malformed),
            "payload {bad:?}"
        );
    }
    // The standard base64 alphabet is not base64url.
    let standard = base64::engine::general_purpose::STANDARD_NO_PAD
        .encode(URL_SAFE_NO_PAD.decode(&s).expect("base64url"));
    if standard != s {
        assert_eq!(
            verify_with(&format!("{h}.{p}.{standard}"), &[ProofAlg::Es256]),
            Err(Reason::Malformed)
        );
    }
    for proof in [
        format!("{h}.{p}"),
        format!("{h}.{p}.{s}.{s}"),
        format!("{h}..{s}"),
        format!(".{p}.{s}"),
        h.clone(),
        format!("{h}. {p}.{s}"),
        format!("{h}.{p}.{s}\n"),
    ] {
        assert_eq!(
            verify_with(&proof, &[ProofAlg::Es256]),
            Err(Reason::Malformed),
            "{proof:?}"
        );
    }
    // Surrounding spaces and tabs are not part of a field value (RFC 9110 §5.5); other whitespace is.
    assert!(verify_with(&format!(" \t{h}.{p}.{s} "), &[ProofAlg::Es256]).is_ok());
    for proof in [
        format!("{h}.{p}.{s}\r\n"),
        format!("\n{h}.{p}.{s}"),
        "  \t ".to_owned(),
    ] {
        assert_eq!(
            verify_with(&proof, &[ProofAlg::Es256]),
            Err(Reason::Malformed),
            "{proof:?}"
        );
    }
    let non_ascii = format!("{h}.{p}.{s}é");
    assert_eq!(
        verify_with(&non_ascii, &[ProofAlg::Es256]),
        Err(Reason::Malformed)
    );
}

#[test]
fn malformed_signature_segment() {
    let key = key(ProofAlg::Es256);
    let [h, p, s] = segments(&key.sign_jws(&header(key), &claims()));
    // Outside the alphabet: not a compact JWS.
    for bad in ["s+g", "sig=", "s/g"] {
        assert_eq!(
            verify_with(&format!("{h}.{p}.{bad}"), &[ProofAlg::Es256]),
            Err(Reason::Malformed),
            "{bad}"
        );
    }
    // Within the alphabet but not a signature: empty, impossible length, wrong size, truncated.
    let truncated = s[..s.len() - 4].to_owned();
    for bad in ["", "A", "AAAA", &truncated, &format!("{s}AAAA")] {
        assert_eq!(
            verify_with(&format!("{h}.{p}.{bad}"), &[ProofAlg::Es256]),
            Err(Reason::BadSignature),
            "{bad}"
        );
    }
    // Non-canonical trailing bits: 86 characters for 64 bytes leave 4 spare bits, which `B` sets.
    let trailing = format!("{}B", &s[..s.len() - 1]);
    assert_eq!(
        verify_with(&format!("{h}.{p}.{trailing}"), &[ProofAlg::Es256]),
        Err(Reason::BadSignature)
    );
}

#[test]
fn ecdsa_signatures_must_be_jose_r_s_not_der() {
    let key = key(ProofAlg::Es256);
    let [h, p, s] = segments(&key.sign_jws(&header(key), &claims()));
    let raw = URL_SAFE_NO_PAD.decode(&s).expect("base64url");
    let der = der_ecdsa_signature(&raw[..32], &raw[32..]);
    assert_eq!(
        verify_with(&format!("{h}.{p}.{}", b64(der)), &[ProofAlg::Es256]),
        Err(Reason::BadSignature)
    );
}

/// The ASN.1 DER `Ecdsa-Sig-Value` of (r, s), as non-JOSE libraries emit it.
fn der_ecdsa_signature(r: &[u8], s: &[u8]) -> Vec<u8> {
    let integer = |v: &[u8]| {
        let v = &v[v.iter().position(|&b| b != 0).unwrap_or(v.len() - 1)..];
        let mut out = vec![0x02];
        if v[0] & 0x80 != 0 {
            out.push(u8::try_from(v.len() + 1).expect("a P-256 scalar is 32 bytes"));
            out.push(0);
        } else {
            out.push(u8::try_from(v.len()).expect("a P-256 scalar is 32 bytes"));
        }
        out.extend_from_slice(v);
        out
    };
    let body = [integer(r), integer(s)].concat();
    [
        vec![0x30, u8::try_from(body.len()).expect("short form length")],
        body,
    ]
    .concat()
}

#[test]
fn ed25519_alg_name_is_accepted_when_eddsa_is_enabled() {
    let key = key(ProofAlg::EdDsa);
    let mut h = header(key);
    h["alg"] = json!("Ed25519");
    let proof = key.sign_jws(&h, &claims());
    assert_eq!(
        verify_with(&proof, &[ProofAlg::EdDsa]).map(|p| p.jkt),
        Ok(key.jkt())
    );
    assert_eq!(verify_with(&proof, &[ProofAlg::Es256]), Err(Reason::BadAlg));
}

#[test]
fn es256_is_refused_when_only_eddsa_is_enabled() {
    let key = key(ProofAlg::Es256);
    assert_eq!(
        verify_with(&key.sign_jws(&header(key), &claims()), &[ProofAlg::EdDsa]),
        Err(Reason::BadAlg)
    );
    assert_eq!(
        verify_with(&key.sign_jws(&header(key), &claims()), &[]),
        Err(Reason::BadAlg)
    );
}

#[test]
fn alg_must_fit_the_key_type() {
    // An ES256 header with an Ed25519 key.
    let ed = key(ProofAlg::EdDsa);
    let mut h = header(ed);
    h["alg"] = json!("ES256");
    assert_eq!(
        verify_with(&ed.sign_jws(&h, &claims()), &ProofAlg::ALL),
        Err(Reason::BadAlg)
    );
    // ES384 with a P-256 key, ES256 with a P-384 key, EdDSA and RS256 with an EC key.
    let p256 = key(ProofAlg::Es256);
    let p384 = key(ProofAlg::Es384);
    for (signer, alg) in [
        (p256, "ES384"),
        (p384, "ES256"),
        (p256, "EdDSA"),
        (p256, "RS256"),
        (key(ProofAlg::Rs256), "ES256"),
    ] {
        let mut h = header(signer);
        h["alg"] = json!(alg);
        assert_eq!(
            verify_with(&signer.sign_jws(&h, &claims()), &ProofAlg::ALL),
            Err(Reason::BadAlg),
            "{alg}"
        );
    }
}

#[test]
fn rsa_1024_bit_key_is_refused() {
    // A 1024-bit modulus (top bit set); the key is refused before any signature is looked at.
    let mut n = [0x9du8; 128];
    n[127] |= 1;
    let rsa = key(ProofAlg::Rs256);
    let h =
        json!({"typ": "dpop+jwt", "alg": "RS256", "jwk": {"kty": "RSA", "n": b64(n), "e": "AQAB"}});
    assert_eq!(
        verify_with(&rsa.sign_jws(&h, &claims()), &[ProofAlg::Rs256]),
        Err(Reason::BadJwk)
    );
}

#[test]
fn oversized_proof_is_refused() {
    let key = key(ProofAlg::EdDsa);
    let mut c = claims();
    c["padding"] = json!("x".repeat(8 * 1024));
    assert_eq!(
        verify_with(&key.sign_jws(&header(key), &c), &[ProofAlg::EdDsa]),
        Err(Reason::Malformed)
    );
}

#[test]
fn extra_header_parameters_and_claims_are_ignored() {
    let key = key(ProofAlg::Es256);
    let mut h = header(key);
    h["cty"] = json!("x");
    let mut c = claims();
    c["exp"] = json!(NOW + 60);
    c["extra"] = json!({"nested": [1, 2, 3]});
    assert!(verify_with(&key.sign_jws(&h, &c), &[ProofAlg::Es256]).is_ok());
}

/// Header members that locate or constrain the key or the encoding: never added at random.
const RESERVED_HEADER: [&str; 9] = [
    "typ", "alg", "jwk", "kid", "jku", "x5u", "x5c", "crit", "b64",
];

/// The claims of a proof.
const CLAIMS: [&str; 6] = ["jti", "htm", "htu", "iat", "ath", "nonce"];

/// One thing wrong with an otherwise valid proof whose header passes every check.
#[derive(Debug, Clone)]
enum Fault {
    /// The signature segment replaced.
    Signature(String),
    /// Signed by a key other than the header's `jwk`.
    SignedByAnother,
    /// A required claim left out.
    Remove(&'static str),
    /// A claim set to this value.
    Set(&'static str, Value),
}

impl Fault {
    /// The reason the proof must be refused with (docs/protocol.md, "Checks and reasons").
    fn reason(&self) -> Reason {
        match self {
            Fault::Signature(_) | Fault::SignedByAnother => Reason::BadSignature,
            Fault::Remove("ath") | Fault::Set("ath", _) => Reason::AthMissing,
            Fault::Remove(_) => Reason::MissingClaim,
            Fault::Set("htm", Value::String(_)) => Reason::HtmMismatch,
            Fault::Set("htu", Value::String(_)) => Reason::HtuMismatch,
            Fault::Set("iat", Value::Number(n)) if n.is_i64() => Reason::StaleProof,
            Fault::Set(_, _) => Reason::MissingClaim,
        }
    }
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,16}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Any JSON value but a string.
fn non_string() -> impl Strategy<Value = Value> {
    json_value().prop_filter("not a string", |v| !v.is_string())
}

/// A `iat` outside the accepted window of [`check`] (60 s old, 5 s ahead).
fn iat_outside_the_window() -> impl Strategy<Value = i64> {
    prop_oneof![
        (61..i64::MAX / 2).prop_map(|d| NOW - d),
        (6..i64::MAX / 2).prop_map(|d| NOW + d)
    ]
}

/// Every way [`Fault`] can spoil a valid proof, with random values.
fn fault() -> impl Strategy<Value = Fault> {
    let required = prop::sample::select(vec!["jti", "htm", "htu", "iat", "ath"]);
    let string_claim = prop::sample::select(vec!["jti", "htm", "htu", "ath", "nonce"]);
    prop_oneof![
        "[A-Za-z0-9_-]{0,400}".prop_map(Fault::Signature),
        Just(Fault::SignedByAnother),
        required.prop_map(Fault::Remove),
        (string_claim, non_string()).prop_map(|(name, v)| Fault::Set(name, v)),
        non_string()
            .prop_filter("not an i64", |v| !v.is_i64())
            .prop_map(|v| Fault::Set("iat", v)),
        prop_oneof![Just(String::new()), "j{257,400}"]
            .prop_map(|jti| Fault::Set("jti", jti.into())),
        "[A-Za-z]{1,10}"
            .prop_filter("another method", |m| m != "DELETE")
            .prop_map(|m| Fault::Set("htm", m.into())),
        prop_oneof![
            "\\PC{0,60}",
            "[a-z0-9/._-]{1,12}".prop_map(|tail| format!("{URL}/{tail}")),
            "[a-z0-9.-]{1,20}".prop_map(|host| format!("https://{host}/api/users/7")),
        ]
        .prop_filter("another URI", |u| htu::normalize(u).as_deref() != Some(URL))
        .prop_map(|u| Fault::Set("htu", u.into())),
        iat_outside_the_window().prop_map(|iat| Fault::Set("iat", iat.into())),
    ]
}

/// A valid ES256 and a valid EdDSA proof, for mutation.
fn valid_proofs() -> &'static [String; 2] {
    static PROOFS: OnceLock<[String; 2]> = OnceLock::new();
    PROOFS.get_or_init(|| {
        [ProofAlg::Es256, ProofAlg::EdDsa].map(|alg| {
            let key = key(alg);
            key.sign_jws(&header(key), &claims())
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_verify(value in proptest::collection::vec(any::<u8>(), 0..2048)) {
        prop_assert!(proof::verify(&[&value], &check(&ProofAlg::ALL)).is_err());
    }

    #[test]
    fn random_compact_shapes_never_verify(value in "[A-Za-z0-9_-]{0,200}\\.[A-Za-z0-9_-]{0,200}\\.[A-Za-z0-9_-]{0,120}") {
        prop_assert!(proof::verify(&[value.as_bytes()], &check(&ProofAlg::ALL)).is_err());
    }

    #[test]
    fn random_json_segments_never_verify(
        alg in 0..ProofAlg::ALL.len(),
        fault in fault(),
        extra_header in proptest::collection::btree_map("[a-z]{1,6}", json_value(), 0..4),
        extra_claims in proptest::collection::btree_map("[a-z]{1,6}", json_value(), 0..4),
    ) {
        // A header that passes every header check: the random part is in the claims and the
        // signature, so each case reaches the claim checks or the signature check.
        let signer = key(ProofAlg::ALL[alg]);
        let other = key(ProofAlg::ALL[(alg + 1) % ProofAlg::ALL.len()]);
        let mut h = header(signer);
        for (name, value) in extra_header {
            if !RESERVED_HEADER.contains(&name.as_str()) {
                h[name] = value;
            }
        }
        let mut c = claims();
        for (name, value) in extra_claims {
            if !CLAIMS.contains(&name.as_str()) {
                c[name] = value;
            }
        }
        let proof = match &fault {
            Fault::Signature(signature) => {
                let [header_b64, payload_b64, _] = segments(&signer.sign_jws(&h, &c));
                format!("{header_b64}.{payload_b64}.{signature}")
            }
            Fault::SignedByAnother => {
other.sign_jws(&h, &c)
            }
            Fault::Remove(name) => {
                c.as_object_mut().expect("claims are an object").remove(*name);
                signer.sign_jws(&h, &c)
            }
            Fault::Set(name, value) => {
                c[*name] = value.clone();
                signer.sign_jws(&h, &c)
            }
        };
        prop_assert_eq!(
            proof::verify(&[proof.as_bytes()], &check(&ProofAlg::ALL)),
            Err(fault.reason()),
            "{:?} with {:?}: {}", ProofAlg::ALL[alg], fault, proof
        );
    }

    #[test]
    fn mutated_proofs_never_verify(which in 0usize..2, position in any::<usize>(), byte in any::<u8>(), operation in 0u8..3) {
        let original = valid_proofs()[which].as_bytes();
        let mut mutated = original.to_vec();
        let at = position % mutated.len();
        match operation {
            0 => mutated[at] = byte,
            1 => mutated.insert(at, byte),
            _ => { mutated.remove(at); }
        }
        prop_assume!(mutated != original);
        let algs = [ProofAlg::Es256, ProofAlg::EdDsa];
        prop_assert!(proof::verify(&[&mutated], &check(&algs)).is_err());
    }
}
