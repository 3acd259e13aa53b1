//! The tools that talk to a gateway rather than being one: a device's key and its proofs,
//! `countersign request` and `proof`, and the two demos. The gateway itself never uses them.

pub mod browser_demo;
pub mod demo;
pub mod device_key;
pub mod request;
