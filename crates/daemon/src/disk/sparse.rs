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
        let len = src.metadata().map_err(|e| DiskError::io(base, e))?.len();
        let mut buf = vec![0u8; 1 << 20];
        // Only the base's data extents are read (its holes stay holes,
        // unread); within them, zero blocks become holes too.
        for (start, end) in data_extents(&src, len).map_err(|e| DiskError::io(base, e))? {
            src.seek(SeekFrom::Start(start))
                .map_err(|e| DiskError::io(base, e))?;
            let mut offset = start;
            while offset < end {
                let want = usize::try_from(end - offset)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                let n = src
                    .read(&mut buf[..want])
                    .map_err(|e| DiskError::io(base, e))?;
                if n == 0 {
                    break;
                }
                if buf[..n].iter().any(|b| *b != 0) {
                    dst.seek(SeekFrom::Start(offset))
                        .and_then(|_| dst.write_all(&buf[..n]))
                        .map_err(|e| DiskError::io(dest, e))?;
                }
                offset += n as u64;
            }
        }
        let size = (u64::from(size_gib) << 30).max(len);
        dst.set_len(size).map_err(|e| DiskError::io(dest, e))
    }
}

/// The `(start, end)` ranges of `file` (of length `len`) that hold data,
/// by `SEEK_DATA`/`SEEK_HOLE`; the whole file where the filesystem cannot
/// say.
fn data_extents(file: &File, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let seek = |offset: u64, whence: i32| -> std::io::Result<Option<u64>> {
        let off = libc::off_t::try_from(offset).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        // SAFETY: lseek on an open descriptor has no memory effects.
        let r = unsafe { libc::lseek(fd, off, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        match std::io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
            e => Err(e),
        }
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at < len {
        let start = match seek(at, libc::SEEK_DATA) {
            Ok(Some(s)) => s,
            Ok(None) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(vec![(0, len)]),
            Err(e) => return Err(e),
        };
        let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        out.push((start, end));
        at = end;
    }
    Ok(out)
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
