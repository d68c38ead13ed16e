//! The overlay workspace's image: the repo as packed (`repo/`) and the
//! paths the host's git saw differ from its index (`banger/changed`, which
//! lets the guest's export look at those and the overlay's upper layer
//! only), made into a read-only ext4 image with `mkfs.ext4 -d`.
//!
//! The tree is staged in memory (a directory of root's on the `/dev/shm`
//! tmpfs) when it fits easily, else beside the image: unpacking tens of
//! thousands of files into a disk filesystem costs several times more.
//! A staging directory is named after the daemon's pid, so one that a
//! crash left behind is removed at the next start ([`sweep_staging`]).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::pack::{self, Repo};
use super::WorkspaceError;
use crate::pathio::FromPathIo;

/// The directory inside the image that holds the repo (the image's root
/// also holds mkfs's `lost+found` and `banger/`).
pub const REPO_DIR: &str = "repo";

/// The NUL-separated list of paths, relative to the repo, that may differ
/// from the shipped index: the host's uncommitted edits and deletions and
/// its untracked files.
pub const CHANGED: &str = "banger/changed";

/// Where staging directories go when they fit in memory.
const SHM: &str = "/dev/shm";
const STAGING_PREFIX: &str = "banger-ws-";

/// Builds the image at `dest` from the listed paths of `repo` (`list` as
/// [`pack::file_list`] makes it).
pub fn build(
    repo: &Repo,
    list: &[u8],
    readonly: bool,
    include_ignored: bool,
    dest: &Path,
) -> Result<(), WorkspaceError> {
    let (bytes, entries) = pack::listed_usage(repo, list);
    let staging = Staging::create(dest, bytes + entries * 4096)?;
    let result = stage(repo, list, readonly, include_ignored, &staging.path)
        .and_then(|()| make(&staging.path, entries, dest));
    drop(staging);
    if result.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    result
}

/// Fills the empty directory `dir` with what the image holds: `repo/`
/// (the listed paths, owned by root, without write bits if `readonly`) and
/// [`CHANGED`].
pub fn stage(
    repo: &Repo,
    list: &[u8],
    readonly: bool,
    include_ignored: bool,
    dir: &Path,
) -> Result<(), WorkspaceError> {
    let repo_dir = dir.join(REPO_DIR);
    let meta = dir.join("banger");
    for d in [&repo_dir, &meta] {
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(d)
            .map_err(|e| WorkspaceError::io(d, e))?;
        // Not narrowed by the daemon's umask: this is what the guest sees.
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| WorkspaceError::io(d, e))?;
    }
    pack::unpack_into(repo, list, readonly, &repo_dir)?;
    // After the copy: a file that changed while it was copied differs from
    // the index in its stat data at least, and is listed.
    let changed = pack::changed(repo, include_ignored)?;
    let path = dir.join(CHANGED);
    std::fs::write(&path, changed).map_err(|e| WorkspaceError::io(&path, e))?;
    if readonly {
        pack::drop_write_bits(&repo_dir)?;
    }
    Ok(())
}

/// `mkfs.ext4 -d` of `tree` at `dest`, with an inode for every entry and
/// room for metadata; the image is root's alone.
fn make(tree: &Path, entries: u64, dest: &Path) -> Result<(), WorkspaceError> {
    let (bytes, files) = pack::tree_usage(tree);
    let files = (files as u64).max(entries);
    // Each file takes at least one 4 KiB block and one inode.
    let size_mib = (bytes + files * 4096) / (1 << 20) * 5 / 4 + 32;
    let inodes = (files + 1024).to_string();
    // Mounted read-only and thrown away with the VM: no journal, and no
    // checksums to compute for every block of metadata (a third of the time).
    crate::ext4::make(
        tree,
        dest,
        "banger-ws",
        &format!("{size_mib}M"),
        &["-N", &inodes, "-O", "^has_journal,^metadata_csum"],
    )?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| WorkspaceError::io(dest, e))
}

/// A staging directory of root's, removed when dropped (in the background
/// when it is in memory: nothing waits for it).
struct Staging {
    path: PathBuf,
    in_memory: bool,
}

impl Staging {
    fn create(dest: &Path, needed: u64) -> Result<Staging, WorkspaceError> {
        let in_memory = fits_in_memory(needed);
        let path = if in_memory {
            static SEQ: AtomicU64 = AtomicU64::new(0);
            Path::new(SHM).join(format!(
                "{STAGING_PREFIX}{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ))
        } else {
            let p = dest.with_extension("staging");
            let _ = std::fs::remove_dir_all(&p);
            p
        };
        // Not recursive: in a directory anyone may write to, an existing
        // name (or a link planted there) is an error, never followed.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| WorkspaceError::io(&path, e))?;
        Ok(Staging { path, in_memory })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let path = std::mem::take(&mut self.path);
        if self.in_memory {
            std::thread::spawn(move || std::fs::remove_dir_all(path));
        } else {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// Whether `needed` bytes fit easily in `/dev/shm`: it is a tmpfs with
/// twice that free, and the host has twice that memory available.
fn fits_in_memory(needed: u64) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let Ok(path) = std::ffi::CString::new(SHM) else {
        return false;
    };
    // SAFETY: a zeroed statfs is a valid value for statfs(2) to fill in.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `st` a valid out pointer.
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } != 0 {
        return false;
    }
    let free = (st.f_bavail as u64).saturating_mul(st.f_bsize as u64);
    st.f_type as i64 == TMPFS_MAGIC
        && free / 2 >= needed
        && mem_available().is_some_and(|m| m / 2 >= needed)
}

/// `MemAvailable` from /proc/meminfo, in bytes.
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Removes staging directories in `/dev/shm` that daemons no longer
/// running left behind (a crash during a prepare); returns how many.
pub fn sweep_staging() -> usize {
    let Ok(entries) = std::fs::read_dir(SHM) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(STAGING_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        let ours = e
            .metadata()
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.is_dir() && m.uid() == 0
            })
            .unwrap_or(false);
        if gone && ours && std::fs::remove_dir_all(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_staging_needs_room() {
        assert!(!fits_in_memory(u64::MAX / 2));
    }

    #[test]
    fn sweep_leaves_live_daemons_and_other_names_alone() {
        // Our own pid is alive: nothing of ours goes.
        let mine = Path::new(SHM).join(format!("{STAGING_PREFIX}{}-test", std::process::id()));
        if std::fs::create_dir(&mine).is_err() {
            eprintln!("skipped: cannot write to {SHM}");
            return;
        }
        sweep_staging();
        assert!(mine.exists());
        std::fs::remove_dir(&mine).unwrap();
    }
}
