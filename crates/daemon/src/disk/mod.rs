//! Copy-on-write root disks over an image. Each strategy is a [`CowDisk`];
//! a VM's strategy is chosen at create from what its backend opens and what
//! the host supports ([`choose`]), and stored with the VM.

pub mod dmsnap;
pub mod probe;
pub mod qcow2;
pub mod reflink;
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
    /// Removes the host objects this strategy set up (devices, loops) for
    /// disks not in `known` (what a crash leaked) and names them. Files are
    /// the caller's to find.
    fn leaked(&self, _known: &[PathBuf]) -> Vec<String> {
        Vec::new()
    }
}

/// `--disk-strategy`: the best the backend and the host support, or one by
/// name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskChoice {
    #[default]
    Auto,
    Named(Strategy),
}

/// The names `--disk-strategy` accepts.
pub const CHOICE_NAMES: &str = "auto, qcow2, dm-snapshot, reflink or copy";

impl std::str::FromStr for DiskChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DiskChoice::Auto),
            _ => Strategy::parse(s)
                .map(DiskChoice::Named)
                .ok_or_else(|| format!("unknown disk strategy {s:?}; use {CHOICE_NAMES}")),
        }
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

/// The strategy `choice` names for a VM of `backend` (which opens
/// `formats`), or why it cannot have it: a one-line error that says what
/// to do.
pub fn pick(
    strategies: &[Arc<dyn CowDisk>],
    choice: DiskChoice,
    backend: &str,
    formats: &[DiskFormat],
    dir: &Path,
) -> Result<Arc<dyn CowDisk>, String> {
    let wanted = match choice {
        DiskChoice::Auto => {
            return choose(strategies, formats, dir).ok_or_else(|| {
                format!(
                    "no copy-on-write disk strategy on this host suits the {backend} backend; `banger doctor` says what is missing"
                )
            })
        }
        DiskChoice::Named(s) => s,
    };
    let Some(disk) = strategies.iter().find(|d| d.strategy() == wanted) else {
        return Err(format!(
            "disk strategy {} is not part of this daemon; use --disk-strategy auto",
            wanted.as_str()
        ));
    };
    if !formats.contains(&disk.format()) {
        return Err(format!(
            "the {backend} backend cannot open {} disks ({}); use --disk-strategy auto",
            wanted.as_str(),
            disk.format().as_str()
        ));
    }
    if !disk.available(dir) {
        return Err(format!(
            "disk strategy {} is not available on this host ({}); use --disk-strategy auto",
            wanted.as_str(),
            unavailable_reason(wanted, dir)
        ));
    }
    Ok(disk.clone())
}

/// Why `strategy` cannot be used in `dir`, for the user.
fn unavailable_reason(strategy: Strategy, dir: &Path) -> String {
    match strategy {
        Strategy::Qcow2 => "qemu-img is not installed".into(),
        Strategy::DmSnapshot => format!(
            "no device-mapper: {} is missing, or dmsetup/losetup are not installed",
            dmsnap::DM_CONTROL
        ),
        Strategy::Reflink => format!(
            "{} is on a filesystem without reflink; XFS made with -m reflink=1 or btrfs has it",
            dir.display()
        ),
        Strategy::Copy => "it cannot write there".into(),
    }
}

/// The strategies this build has, best first.
pub fn system_strategies() -> Vec<Arc<dyn CowDisk>> {
    vec![
        Arc::new(qcow2::Qcow2),
        Arc::new(dmsnap::DmSnapshot::default()),
        Arc::new(reflink::Reflink),
        Arc::new(sparse::SparseCopy),
    ]
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
        let expected = if Path::new(dmsnap::DM_CONTROL).exists() {
            Strategy::DmSnapshot
        } else if reflink::supported_in(dir) {
            Strategy::Reflink
        } else {
            Strategy::Copy
        };
        assert_eq!(raw_only.strategy(), expected);
        assert!(choose(&all, &[], dir).is_none());
    }

    #[test]
    fn a_named_strategy_is_checked_against_backend_and_host() {
        let all = system_strategies();
        let dir = Path::new("/tmp");
        let raw = [DiskFormat::Raw];
        let copy = pick(&all, "copy".parse().unwrap(), "firecracker", &raw, dir).unwrap();
        assert_eq!(copy.strategy(), Strategy::Copy);
        let e = pick(&all, "qcow2".parse().unwrap(), "firecracker", &raw, dir)
            .err()
            .unwrap();
        assert!(e.contains("firecracker backend cannot open qcow2"), "{e}");
        if !Path::new(dmsnap::DM_CONTROL).exists() {
            let e = pick(&all, "dm-snapshot".parse().unwrap(), "qemu", &raw, dir)
                .err()
                .unwrap();
            assert!(e.contains("no device-mapper"), "{e}");
        }
        let e = "sparse".parse::<DiskChoice>().unwrap_err();
        assert!(
            e.contains("auto, qcow2, dm-snapshot, reflink or copy"),
            "{e}"
        );
        assert_eq!("auto".parse::<DiskChoice>(), Ok(DiskChoice::Auto));
    }
}
