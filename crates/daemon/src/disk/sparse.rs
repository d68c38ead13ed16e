//! The last resort: a sparse full copy of the image, grown to the disk size.
//! Used where neither qcow2 nor reflink is available (Firecracker on a
//! filesystem without reflink).

use crate::pathio::FromPathIo;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::{CowDisk, DiskError, Strategy};
use crate::vmm::DiskFormat;

pub struct SparseCopy;

impl CowDisk for SparseCopy {
    fn strategy(&self) -> Strategy {
        Strategy::Copy
    }
    fn format(&self) -> DiskFormat {
        DiskFormat::Raw
    }
    fn create(&self, base: &Path, dest: &Path, size_gib: u32) -> Result<(), DiskError> {
        if super::probe::format(base) == DiskFormat::Qcow2 {
            return from_layers(base, dest, size_gib);
        }
        let mut src = File::open(base).map_err(|e| DiskError::io(base, e))?;
        let mut dst = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dest)
            .map_err(|e| DiskError::io(dest, e))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        loop {
            let n = src.read(&mut buf).map_err(|e| DiskError::io(base, e))?;
            if n == 0 {
                break;
            }
            // Zero blocks become holes.
            if buf[..n].iter().any(|b| *b != 0) {
                dst.seek(SeekFrom::Start(offset))
                    .and_then(|_| dst.write_all(&buf[..n]))
                    .map_err(|e| DiskError::io(dest, e))?;
            }
            offset += n as u64;
        }
        let size = (u64::from(size_gib) << 30).max(offset);
        dst.set_len(size).map_err(|e| DiskError::io(dest, e))
    }
}

/// A raw copy of a layered image (one made from a VM): `qemu-img convert`
/// writes it sparse, then it grows to the disk size.
fn from_layers(base: &Path, dest: &Path, size_gib: u32) -> Result<(), DiskError> {
    if dest.exists() {
        return Err(DiskError::io(
            dest,
            std::io::ErrorKind::AlreadyExists.into(),
        ));
    }
    // `-S 4k`: runs of zeros of 4 KiB or more stay holes.
    let args: [&std::ffi::OsStr; 8] = [
        "convert".as_ref(),
        "-q".as_ref(),
        "-O".as_ref(),
        "raw".as_ref(),
        "-S".as_ref(),
        "4k".as_ref(),
        base.as_os_str(),
        dest.as_os_str(),
    ];
    crate::cmd::run("qemu-img", &args)?;
    let f = OpenOptions::new()
        .write(true)
        .open(dest)
        .map_err(|e| DiskError::io(dest, e))?;
    let len = f.metadata().map_err(|e| DiskError::io(dest, e))?.len();
    f.set_len((u64::from(size_gib) << 30).max(len))
        .map_err(|e| DiskError::io(dest, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn copies_content_and_keeps_holes() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        let mut data = vec![0u8; 4 << 20];
        data[10] = 7;
        data[3 << 20] = 9;
        std::fs::write(&base, &data).unwrap();
        let dest = dir.path().join("disk");
        SparseCopy.create(&base, &dest, 1).unwrap();
        assert_eq!(std::fs::metadata(&dest).unwrap().len(), 1 << 30);
        let mut copy = vec![0u8; data.len()];
        File::open(&dest).unwrap().read_exact(&mut copy).unwrap();
        assert_eq!(copy, data);
        let meta = std::fs::metadata(&dest).unwrap();
        assert!(meta.blocks() * 512 < 8 << 20, "copy is not sparse");
        assert!(SparseCopy.create(&base, &dest, 1).is_err(), "overwrote");
        SparseCopy.remove(&dest).unwrap();
        SparseCopy.remove(&dest).unwrap();
    }
}
