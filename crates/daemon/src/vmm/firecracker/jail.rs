//! Running Firecracker under its `jailer`: chroot, new mount namespace,
//! the VM's own uid and gid. Everything Firecracker opens must be inside
//! the chroot, so each file is exposed there before the call that names
//! it: a hard link (the VM's files and the image are on the state
//! directory's filesystem, where the jail is), a device node for a block
//! device (a dm-snapshot disk), a copy for a kernel or initrd on another
//! filesystem. The API then names them by their path inside the chroot.
//!
//! Layout (`jailer --chroot-base-dir STATE/vms/NAME/jail`):
//!
//! ```text
//! STATE/vms/NAME/jail/firecracker/banger-vm-NAME/root/   the chroot
//!     fc.sock      the API socket (RUN/vms/NAME/control.sock links to it)
//!     vmlinux, initrd.img, drive-root, drive-config, drive-workspace, ...
//! ```

use std::ffi::OsString;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::vmm::VmmError;

/// The API socket's path inside the chroot.
pub const SOCKET: &str = "/fc.sock";

/// One VM's jail.
#[derive(Debug, Clone)]
pub struct Jail {
    /// `--chroot-base-dir`.
    pub base: PathBuf,
    /// The chroot itself, on the host.
    pub root: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

fn io(what: String, source: std::io::Error) -> VmmError {
    VmmError::Io { what, source }
}

impl Jail {
    /// The jail of instance `id` of `exec` under `base`, as the jailer lays
    /// it out: `BASE/EXEC_FILE_NAME/ID/root`.
    pub fn new(base: &Path, exec: &Path, id: &str, uid: u32, gid: u32) -> Jail {
        let exec_name = exec.file_name().unwrap_or_else(|| "firecracker".as_ref());
        Jail {
            base: base.to_path_buf(),
            root: base.join(exec_name).join(id).join("root"),
            uid,
            gid,
        }
    }

    /// The jailer's arguments; Firecracker's own follow `--`.
    pub fn args(&self, jailer: &Path, exec: &Path, id: &str) -> (PathBuf, Vec<OsString>) {
        let mut a: Vec<OsString> = vec!["--id".into(), id.into(), "--exec-file".into()];
        a.push(exec.into());
        a.extend([
            "--uid".into(),
            self.uid.to_string().into(),
            "--gid".into(),
            self.gid.to_string().into(),
            "--chroot-base-dir".into(),
        ]);
        a.push(self.base.clone().into());
        a.extend(["--".into(), "--api-sock".into(), SOCKET.into()]);
        (jailer.to_path_buf(), a)
    }

    /// A fresh, empty chroot (what an earlier run left is removed).
    pub fn prepare(&self) -> Result<(), VmmError> {
        self.remove()?;
        std::fs::create_dir_all(&self.root)
            .map_err(|e| io(format!("creating the jail {}", self.root.display()), e))
    }

    /// Removes the whole jail; gone is success. Hard links only: the VM's
    /// files stay where they are.
    pub fn remove(&self) -> Result<(), VmmError> {
        match std::fs::remove_dir_all(&self.base) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io(format!("removing the jail {}", self.base.display()), e))
            }
            _ => Ok(()),
        }
    }

    /// The API socket on the host.
    pub fn socket(&self) -> PathBuf {
        self.root.join(SOCKET.trim_start_matches('/'))
    }

    /// Makes `host` visible in the chroot as `/name` (replacing what was
    /// there); returns the path Firecracker is told.
    pub fn expose(&self, host: &Path, name: &str) -> Result<PathBuf, VmmError> {
        let inside = self.root.join(name);
        let _ = std::fs::remove_file(&inside);
        let meta = std::fs::metadata(host).map_err(|e| io(format!("{}", host.display()), e))?;
        if meta.file_type().is_block_device() {
            make_block_node(&inside, meta.rdev())?;
            std::os::unix::fs::chown(&inside, Some(self.uid), Some(self.gid))
                .map_err(|e| io(format!("chown {}", inside.display()), e))?;
        } else if let Err(link) = std::fs::hard_link(host, &inside) {
            if meta.uid() != 0 || meta.len() > COPY_LIMIT {
                return Err(io(
                    format!(
                        "linking {} into the jail (the VM's files must be on the state directory's filesystem)",
                        host.display()
                    ),
                    link,
                ));
            }
            // A root-owned kernel or initrd elsewhere (--image-dir): a copy.
            std::fs::copy(host, &inside)
                .map_err(|e| io(format!("copying {} into the jail", host.display()), e))?;
        }
        Ok(Path::new("/").join(name))
    }
}

/// The largest read-only file copied into a jail when it cannot be linked
/// (a kernel, an initrd).
const COPY_LIMIT: u64 = 256 << 20;

fn make_block_node(path: &Path, rdev: u64) -> Result<(), VmmError> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        io(
            path.display().to_string(),
            std::io::ErrorKind::InvalidInput.into(),
        )
    })?;
    // SAFETY: a valid NUL-terminated path; mknod only creates the node.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, rdev as libc::dev_t) };
    if rc != 0 {
        return Err(io(
            format!("mknod {}", path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jailer_is_told_the_id_uid_and_chroot() {
        let jail = Jail::new(
            Path::new("/var/lib/banger/vms/dev/jail"),
            Path::new("/usr/bin/firecracker"),
            "banger-vm-dev",
            2_000_000_001,
            2_000_000_001,
        );
        assert_eq!(
            jail.root,
            Path::new("/var/lib/banger/vms/dev/jail/firecracker/banger-vm-dev/root")
        );
        assert_eq!(
            jail.socket(),
            Path::new("/var/lib/banger/vms/dev/jail/firecracker/banger-vm-dev/root/fc.sock")
        );
        let (prog, args) = jail.args(
            Path::new("/usr/bin/jailer"),
            Path::new("/usr/bin/firecracker"),
            "banger-vm-dev",
        );
        assert_eq!(prog, Path::new("/usr/bin/jailer"));
        let line: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
        assert_eq!(
            line.join(" "),
            "--id banger-vm-dev --exec-file /usr/bin/firecracker --uid 2000000001 --gid 2000000001 \
             --chroot-base-dir /var/lib/banger/vms/dev/jail -- --api-sock /fc.sock"
        );
    }

    #[test]
    fn files_are_linked_into_the_chroot_and_the_jail_goes_whole() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("root.img");
        std::fs::write(&disk, b"disk").unwrap();
        let uid = unsafe { libc::getuid() };
        let jail = Jail::new(
            &dir.path().join("jail"),
            Path::new("/x/firecracker"),
            "banger-vm-a",
            uid,
            uid,
        );
        jail.prepare().unwrap();
        assert_eq!(
            jail.expose(&disk, "drive-root").unwrap(),
            Path::new("/drive-root")
        );
        let inside = jail.root.join("drive-root");
        assert_eq!(
            std::fs::metadata(&inside).unwrap().ino(),
            std::fs::metadata(&disk).unwrap().ino(),
            "a hard link, not a copy"
        );
        jail.expose(&disk, "drive-root").unwrap();
        jail.remove().unwrap();
        jail.remove().unwrap();
        assert!(!jail.base.exists());
        assert_eq!(
            std::fs::read(&disk).unwrap(),
            b"disk",
            "the VM's file stays"
        );
    }
}
