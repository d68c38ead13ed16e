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
        let base_format = base_format(&base).map_err(|e| DiskError::io(&base, e))?;
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

/// The format of an overlay's base: qcow2 (a template's disk) by its
/// magic, else raw (an image's root filesystem).
fn base_format(base: &Path) -> std::io::Result<&'static str> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(base)?;
    let n = f.read(&mut magic)?;
    Ok(if n == 4 && magic == *b"QFI\xfb" {
        "qcow2"
    } else {
        "raw"
    })
}
