//! The error shape shared by every module that runs host programs and
//! touches files (disks, guest access, images, workspaces): a program that
//! failed, an I/O error on a path, input that is wrong, or a step that
//! failed for a reason of its own. Each module names it for itself
//! (`DiskError`, `GuestError`, ...).

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Cmd(#[from] crate::cmd::CmdError),
    #[error(transparent)]
    Io(#[from] crate::pathio::PathIoError),
    /// The caller's input is wrong (a path that is not a repo, ...).
    #[error("{0}")]
    Invalid(String),
    /// The step failed; the message says why.
    #[error("{0}")]
    Failed(String),
}
