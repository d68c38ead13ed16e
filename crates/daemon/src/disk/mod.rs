//! Copy-on-write root disks over an image. Each strategy is a [`CowDisk`];
//! a VM's strategy is chosen at create from what its backend opens and what
//! the host supports ([`choose`]), and stored with the VM.

pub mod probe;
pub mod qcow2;
pub mod sparse;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::pathio::FromPathIo;
use crate::vmm::DiskFormat;

/// See [`crate::hosterror::HostError`].
pub type DiskError = crate::hosterror::HostError;

/// How a VM's root disk is made over its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// A qcow2 overlay with the image as backing file (QEMU).
    Qcow2,
    /// A device-mapper snapshot over a loop device of the image.
    DmSnapshot,
    /// A `FICLONE` copy on a filesystem that shares blocks.
    Reflink,
    /// A sparse full copy: the last resort.
    Copy,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Qcow2 => "qcow2",
            Strategy::DmSnapshot => "dm-snapshot",
            Strategy::Reflink => "reflink",
            Strategy::Copy => "copy",
        }
    }

    /// The disk's file name in the VM's directory (named for what it is).
    pub fn file_name(self) -> &'static str {
        match self {
            Strategy::Qcow2 => "root.qcow2",
            Strategy::DmSnapshot => "root.cow",
            Strategy::Reflink | Strategy::Copy => "root.img",
        }
    }

    pub fn parse(s: &str) -> Option<Strategy> {
        [
            Strategy::Qcow2,
            Strategy::DmSnapshot,
            Strategy::Reflink,
            Strategy::Copy,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// A way to make a VM's writable root disk over a read-only base.
pub trait CowDisk: Send + Sync {
    fn strategy(&self) -> Strategy;
    /// The format the VMM must be told.
    fn format(&self) -> DiskFormat;
    /// Whether this host can make such disks in `dir`.
    fn available(&self, _dir: &Path) -> bool {
        true
    }
    /// Creates `dest` over `base`, `size_gib` big. Replaces nothing: `dest`
    /// must not exist.
    fn create(&self, base: &Path, dest: &Path, size_gib: u32) -> Result<(), DiskError>;
    /// Makes the disk usable before a boot; returns the path the VMM opens
    /// (a device for dm-snapshot, `dest` itself for file strategies).
    fn activate(&self, _base: &Path, dest: &Path) -> Result<PathBuf, DiskError> {
        Ok(dest.to_path_buf())
    }
    /// Undoes [`CowDisk::activate`] after the VMM is gone; the data stays.
    /// Already inactive is success.
    fn deactivate(&self, _dest: &Path) -> Result<(), DiskError> {
        Ok(())
    }
    /// Removes `dest` for good; already gone is success.
    fn remove(&self, dest: &Path) -> Result<(), DiskError> {
        self.deactivate(dest)?;
        match std::fs::remove_file(dest) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DiskError::io(dest, e)),
            _ => Ok(()),
        }
    }
    /// Host objects this strategy set up (devices, loops) for disks not in
    /// `known`: what a crash leaked. Files are the caller's to find.
    fn leaked(&self, _known: &[PathBuf]) -> Vec<String> {
        Vec::new()
    }
}

/// The first of `strategies` (best first) whose format the backend opens
/// and that the host supports in `dir`.
pub fn choose(
    strategies: &[Arc<dyn CowDisk>],
    formats: &[DiskFormat],
    dir: &Path,
) -> Option<Arc<dyn CowDisk>> {
    strategies
        .iter()
        .find(|s| formats.contains(&s.format()) && s.available(dir))
        .cloned()
}

/// The strategies this build has, best first.
pub fn system_strategies() -> Vec<Arc<dyn CowDisk>> {
    vec![Arc::new(qcow2::Qcow2), Arc::new(sparse::SparseCopy)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in [
            Strategy::Qcow2,
            Strategy::DmSnapshot,
            Strategy::Reflink,
            Strategy::Copy,
        ] {
            assert_eq!(Strategy::parse(s.as_str()), Some(s));
        }
        assert_eq!(Strategy::parse("sparse"), None);
    }

    #[test]
    fn the_backend_formats_decide() {
        let all = system_strategies();
        let dir = Path::new("/tmp");
        let qemu = choose(&all, &[DiskFormat::Qcow2, DiskFormat::Raw], dir).unwrap();
        assert_eq!(qemu.strategy(), Strategy::Qcow2);
        let raw_only = choose(&all, &[DiskFormat::Raw], dir).unwrap();
        assert_eq!(raw_only.strategy(), Strategy::Copy);
        assert!(choose(&all, &[], dir).is_none());
    }
}
