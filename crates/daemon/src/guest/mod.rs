//! Reaching guests: SSH keys and pinned host keys, readiness, the per-VM
//! config drive that carries the VM's identity.

pub mod configdrive;
pub mod ssh;

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error(transparent)]
    Cmd(#[from] crate::cmd::CmdError),
    #[error(transparent)]
    Io(#[from] crate::pathio::PathIoError),
    #[error("{0}")]
    Ssh(String),
}
