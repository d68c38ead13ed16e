//! Reflink copies: `FICLONE` makes the VM's disk share every block with the
//! image until either is written, in constant time, on a filesystem that
//! supports it (XFS made with `-m reflink=1`, btrfs). Raw, so Firecracker
//! opens it as well as QEMU.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use super::{CowDisk, DiskError, Strategy};
use crate::pathio::FromPathIo;
use crate::vmm::DiskFormat;

/// `FICLONE` from <linux/fs.h>: `_IOW(0x94, 9, int)`.
const FICLONE: libc::c_ulong = 0x4004_9409;

pub struct Reflink;

/// Makes `dest` (new) share all of `src`'s blocks.
pub fn clone_file(src: &Path, dest: &Path) -> Result<(), DiskError> {
    let from = File::open(src).map_err(|e| DiskError::io(src, e))?;
    let to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(|e| DiskError::io(dest, e))?;
    // SAFETY: FICLONE takes the source descriptor as its argument; both
    // descriptors are open for the whole call.
    let rc = unsafe { libc::ioctl(to.as_raw_fd(), FICLONE, from.as_raw_fd()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        drop(to);
        let _ = std::fs::remove_file(dest);
        return Err(DiskError::Failed(format!(
            "cannot reflink {} to {}: {err} (the filesystem must share blocks: XFS with reflink=1, or btrfs; use --disk-strategy copy elsewhere)",
            src.display(),
            dest.display()
        )));
    }
    Ok(())
}

/// Whether files in `dir` can be reflinked (tried on a small file, both
/// removed again).
pub fn supported_in(dir: &Path) -> bool {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let src = dir.join(format!(".reflink-probe-{}-{n}", std::process::id()));
    let dest = src.with_extension("clone");
    let ok = std::fs::write(&src, [1u8; 4096]).is_ok() && clone_file(&src, &dest).is_ok();
    let _ = std::fs::remove_file(&src);
    let _ = std::fs::remove_file(&dest);
    ok
}

impl CowDisk for Reflink {
    fn strategy(&self) -> Strategy {
        Strategy::Reflink
    }
    fn format(&self) -> DiskFormat {
        DiskFormat::Raw
    }
    fn available(&self, dir: &Path) -> bool {
        supported_in(dir)
    }
    fn create(&self, base: &Path, dest: &Path, size_gib: u32) -> Result<(), DiskError> {
        clone_file(base, dest)?;
        let grow = || -> std::io::Result<()> {
            let f = OpenOptions::new().write(true).open(dest)?;
            let size = (u64::from(size_gib) << 30).max(f.metadata()?.len());
            f.set_len(size)
        };
        grow().map_err(|e| {
            let _ = std::fs::remove_file(dest);
            DiskError::io(dest, e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filesystem_without_reflink_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        if supported_in(dir.path()) {
            eprintln!(
                "skipped: {} supports reflink; the privileged test covers it",
                dir.path().display()
            );
            return;
        }
        let base = dir.path().join("base");
        std::fs::write(&base, b"image").unwrap();
        let dest = dir.path().join("root.img");
        let e = Reflink.create(&base, &dest, 1).unwrap_err().to_string();
        assert!(e.contains("--disk-strategy copy"), "{e}");
        assert!(!dest.exists(), "a failed clone left its file");
    }
}
