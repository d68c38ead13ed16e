//! The VM lifecycle: the stored record and its transition table, the rules
//! of which verb is valid in which state, the service that carries the
//! verbs out (one file per group, all through `run_op`), and
//! reconciliation at startup.

mod boot;
pub mod caller;
pub mod copy;
mod create;
pub mod error;
mod imagefromvm;
mod images;
pub mod lifecycle;
mod oneshot;
pub mod ports;
mod power;
mod reads;
pub mod reconcile;
pub mod record;
mod remove;
pub mod runner;
pub mod service;
mod template;
pub mod transition;
mod ttl;

#[cfg(test)]
mod tests;

pub use caller::Caller;
pub use error::VmError;
pub use record::VmRecord;
pub use service::VmService;
