//! The VM lifecycle: the rules of which verb is valid in which state, the
//! service that carries the verbs out, and reconciliation at startup.

pub mod lifecycle;
pub mod ports;
pub mod reconcile;
pub mod service;

pub use service::VmService;
