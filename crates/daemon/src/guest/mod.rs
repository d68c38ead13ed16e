//! Reaching guests: SSH keys and pinned host keys, readiness (and the
//! console line that says sshd listens), the per-VM
//! config drive that carries the VM's identity, and what a VM restored from
//! a template is told instead.

pub mod configdrive;
pub mod console;
pub mod restore;
pub mod ssh;

/// See [`crate::hosterror::HostError`].
pub type GuestError = crate::hosterror::HostError;
