//! Copy-on-write root disks over an image, created in time independent of
//! the image size. One strategy per host capability, chosen at startup.

pub mod qcow2;
pub mod sparse;

use crate::pathio::FromPathIo;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Cmd(#[from] crate::cmd::CmdError),
    #[error(transparent)]
    Io(#[from] crate::pathio::PathIoError),
}

/// A way to make a VM's writable root disk over a read-only base.
pub trait CowDisk: Send + Sync {
    /// Short name (`qcow2`, `sparse`), shown by `doctor`.
    fn name(&self) -> &'static str;
    /// The format the VMM must be told (`qcow2`, `raw`).
    fn format(&self) -> &'static str;
    /// Creates `dest` over `base`, `size_gib` big. Replaces nothing: `dest`
    /// must not exist.
    fn create(&self, base: &Path, dest: &Path, size_gib: u32) -> Result<(), DiskError>;
    /// Removes `dest`; already gone is success.
    fn remove(&self, dest: &Path) -> Result<(), DiskError> {
        match std::fs::remove_file(dest) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DiskError::io(dest, e)),
            _ => Ok(()),
        }
    }
}
