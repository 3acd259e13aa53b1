//! countersign: a Pingora reverse proxy that lets high-impact actions on legacy admin APIs run only
//! with a confirmation bound to one session, one device key, one exact action, one short window,
//! and one use (DPoP, RFC 9449, with a gateway nonce).

pub mod alg;
pub mod htu;
pub mod jwk;
pub mod keys;
pub mod proof;
pub mod reason;
