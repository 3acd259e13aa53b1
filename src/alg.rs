//! DPoP proof algorithms that `confirmation.algs` can enable.

/// A DPoP proof algorithm family accepted by `confirmation.algs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProofAlg {
    /// ECDSA P-256 SHA-256.
    Es256,
    /// ECDSA P-384 SHA-384.
    Es384,
    /// Ed25519, as `EdDSA` or the RFC 9864 name `Ed25519`.
    EdDsa,
    /// RSASSA-PKCS1-v1_5 SHA-256.
    Rs256,
    /// RSASSA-PSS SHA-256.
    Ps256,
}

impl ProofAlg {
    /// Every algorithm, in the order `WWW-Authenticate` lists them.
    pub const ALL: [ProofAlg; 5] = [
        ProofAlg::Es256,
        ProofAlg::Es384,
        ProofAlg::EdDsa,
        ProofAlg::Rs256,
        ProofAlg::Ps256,
    ];

    /// The JOSE name as written in config and `WWW-Authenticate`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProofAlg::Es256 => "ES256",
            ProofAlg::Es384 => "ES384",
            ProofAlg::EdDsa => "EdDSA",
            ProofAlg::Rs256 => "RS256",
            ProofAlg::Ps256 => "PS256",
        }
    }

    /// Parses a config name (`EdDSA` and `Ed25519` both mean Ed25519).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "ES256" => ProofAlg::Es256,
            "ES384" => ProofAlg::Es384,
            "EdDSA" | "Ed25519" => ProofAlg::EdDsa,
            "RS256" => ProofAlg::Rs256,
            "PS256" => ProofAlg::Ps256,
            _ => return None,
        })
    }
}
