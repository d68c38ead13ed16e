//! qcow2 overlays with the image as backing file (QEMU): constant time.

use crate::pathio::FromPathIo;
use std::path::Path;

use super::{CowDisk, DiskError, Strategy};
use crate::cmd;
use crate::vmm::DiskFormat;

pub struct Qcow2;

impl CowDisk for Qcow2 {
    fn strategy(&self) -> Strategy {
        Strategy::Qcow2
    }
    fn format(&self) -> DiskFormat {
        DiskFormat::Qcow2
    }
    fn available(&self, _dir: &Path) -> bool {
        cmd::which("qemu-img").is_some()
    }
    fn create(&self, base: &Path, dest: &Path, size_gib: u32) -> Result<(), DiskError> {
        if dest.exists() {
            return Err(DiskError::io(
                dest,
                std::io::ErrorKind::AlreadyExists.into(),
            ));
        }
        let base = base.canonicalize().map_err(|e| DiskError::io(base, e))?;
        // A built image is raw; one made from a VM is itself a qcow2 layer.
        let base_format = super::probe::format(&base).as_str();
        let size = format!("{size_gib}G");
        cmd::run(
            "qemu-img",
            &[
                "create".as_ref(),
                "-q".as_ref(),
                "-f".as_ref(),
                "qcow2".as_ref(),
                "-F".as_ref(),
                base_format.as_ref(),
                "-b".as_ref(),
                base.as_os_str(),
                dest.as_os_str(),
                size.as_ref(),
            ] as &[&std::ffi::OsStr],
        )?;
        Ok(())
    }
}
