//! countersign: a Pingora reverse proxy that lets high-impact actions on legacy admin APIs run only
//! with a confirmation bound to one session, one device key, one exact action, one short window,
//! and one use (DPoP, RFC 9449, with a gateway nonce).

pub mod admission;
pub mod alg;
pub mod audit;
mod body;
pub mod browser;
pub mod client;
pub mod conditions;
pub mod config;
pub mod confirm;
pub mod demo;
pub mod devices;
pub mod forward;
pub mod forwarding;
pub mod gateway;
pub mod htu;
pub mod jwk;
pub mod keys;
pub mod metrics;
pub mod nonce;
pub mod policy;
pub mod proof;
pub mod provenance;
pub mod reason;
pub mod reload;
pub mod reply;
pub mod revocation;
pub mod routes;
pub mod server;
pub mod session;
pub mod store;
pub mod target;
pub mod unprotected;
