//! Reaching guests: SSH keys and pinned host keys, readiness, the per-VM
//! config drive that carries the VM's identity.

pub mod configdrive;
pub mod ssh;

/// See [`crate::hosterror::HostError`].
pub type GuestError = crate::hosterror::HostError;
