//! countersign: a Pingora reverse proxy that lets high-impact actions on legacy admin APIs run only
//! with a confirmation bound to one session, one device key, one exact action, one short window,
//! and one use (DPoP, RFC 9449, with a gateway nonce).

mod admission;
pub mod alg;
pub mod approvals;
pub mod audit;
mod body;
pub mod browser;
mod clock;
pub mod conditions;
pub mod config;
pub mod confirm;
mod continuation;
mod decision;
pub mod devices;
mod forwarding;
mod front;
mod gateway;
pub mod htu;
pub mod jwk;
mod ledger;
pub mod metrics;
pub mod nonce;
pub mod policy;
pub mod proof;
pub mod provenance;
mod quota;
pub mod reason;
mod refusal;
mod relay;
mod reload;
mod reply;
pub mod revocation;
pub mod routes;
pub mod server;
pub mod session;
pub mod store;
mod target;
pub mod tools;
pub mod unprotected;
mod upstreams;
