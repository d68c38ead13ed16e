//! Reaching guests: SSH keys and pinned host keys, readiness, the per-VM
//! config drive that carries the VM's identity.

pub mod configdrive;
pub mod ssh;

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error(transparent)]
    Cmd(#[from] crate::cmd::CmdError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Ssh(String),
}

impl GuestError {
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        GuestError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
