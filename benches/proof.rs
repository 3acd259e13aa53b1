//! Cost of `proof::verify` next to the raw signature verification it wraps, per algorithm: the
//! difference is parsing, key validation, the thumbprint, claims and `htu` normalisation.

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, UnparsedPublicKey,
    VerificationAlgorithm, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use countersign::alg::ProofAlg;
use countersign::proof::{self, ProofCheck};
use countersign::tools::device_key::DeviceKey;
use criterion::{criterion_group, criterion_main, Criterion};

const URL: &str = "https://admin.example.com/api/users/7";

/// The public key bytes aws-lc-rs verifies with, taken from the device key's PKCS#8.
fn raw_public_key(key: &DeviceKey) -> Vec<u8> {
    let pem_text = key.to_pkcs8_pem();
    let block = pem::parse(pem_text).expect("DeviceKey writes valid PEM");
    let der = block.contents();
    let parsed = match key.alg() {
        ProofAlg::Es256 => EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map(|k| k.public_key().as_ref().to_vec())
            .ok(),
        ProofAlg::Es384 => EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, der)
            .map(|k| k.public_key().as_ref().to_vec())
            .ok(),
        ProofAlg::EdDsa => Ed25519KeyPair::from_pkcs8(der)
            .map(|k| k.public_key().as_ref().to_vec())
            .ok(),
        ProofAlg::Rs256 | ProofAlg::Ps256 => RsaKeyPair::from_pkcs8(der)
            .map(|k| k.public_key().as_ref().to_vec())
            .ok(),
    };
    parsed.expect("DeviceKey PKCS#8 matches its algorithm")
}

fn verification_algorithm(alg: ProofAlg) -> &'static dyn VerificationAlgorithm {
    match alg {
        ProofAlg::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
        ProofAlg::Es384 => &signature::ECDSA_P384_SHA384_FIXED,
        ProofAlg::EdDsa => &signature::ED25519,
        ProofAlg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        ProofAlg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
    }
}

fn bench_proof_verify(c: &mut Criterion) {
    let credential = "session-credential";
    for alg in ProofAlg::ALL {
        let key = DeviceKey::generate(alg).expect("key generation works on this platform");
        let proof_text = key.proof("DELETE", URL, Some("nonce-1"), Some(credential));
        // Taken after signing, per algorithm: earlier groups run long enough that a `now` taken
        // at the start would be more than the clock-skew allowance behind this proof's `iat`.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let now = i64::try_from(now).expect("the clock is before year 292 billion");
        let (signing_input, signature_b64) = proof_text.rsplit_once('.').expect("a JWS has dots");
        let signature = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .expect("our signature is base64url");
        let public_key = raw_public_key(&key);
        let check = ProofCheck {
            algs: &ProofAlg::ALL,
            method: "DELETE",
            htu: URL,
            now,
            max_age: Duration::from_secs(3600),
            clock_skew: Duration::from_secs(5),
        };
        let verified =
            proof::verify(&[proof_text.as_bytes()], &check).expect("the bench proof verifies");
        assert!(verified.ath_matches(&countersign::session::ath(credential)));

        let mut group = c.benchmark_group(alg.as_str());
        group.bench_function("raw_verify", |b| {
            let unparsed = UnparsedPublicKey::new(verification_algorithm(alg), &public_key);
            b.iter(|| unparsed.verify(black_box(signing_input.as_bytes()), black_box(&signature)))
        });
        group.bench_function("proof_verify", |b| {
            b.iter(|| proof::verify(black_box(&[proof_text.as_bytes()]), black_box(&check)))
        });
        group.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_proof_verify
}
criterion_main!(benches);
