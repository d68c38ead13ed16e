//! Every path under the state, run and image directories, in one place.

use std::path::{Path, PathBuf};

/// Where the daemon keeps things. Every path can be overridden for tests.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Persistent state: the database, keys, per-VM disks.
    pub state_dir: PathBuf,
    /// Runtime files: the socket, QMP sockets, pid files.
    pub run_dir: PathBuf,
    /// Built guest images, one directory each.
    pub image_dir: PathBuf,
}

impl Layout {
    pub fn new(state_dir: PathBuf, run_dir: PathBuf, image_dir: Option<PathBuf>) -> Self {
        let image_dir = image_dir.unwrap_or_else(|| state_dir.join("images"));
        Self {
            state_dir,
            run_dir,
            image_dir,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.run_dir.join("banger.sock")
    }
    pub fn database(&self) -> PathBuf {
        self.state_dir.join("banger.db")
    }
    pub fn ssh_dir(&self) -> PathBuf {
        self.state_dir.join("ssh")
    }
    /// The daemon's ed25519 client key; guests authorize its public half.
    pub fn client_key(&self) -> PathBuf {
        self.ssh_dir().join("id_ed25519")
    }
    /// Pinned host keys of every VM; banger's SSH checks against it strictly.
    pub fn known_hosts(&self) -> PathBuf {
        self.ssh_dir().join("known_hosts")
    }
    /// The `Host *.vm` block that `ssh-config --install` includes.
    pub fn ssh_config(&self) -> PathBuf {
        self.ssh_dir().join("config")
    }

    /// A VM's persistent directory: root disk, config drive, console log.
    pub fn vm_dir(&self, name: &str) -> PathBuf {
        self.state_dir.join("vms").join(name)
    }
    /// The root disk, named for its strategy (`root.qcow2`, `root.img`, ...).
    pub fn vm_disk(&self, name: &str, strategy: crate::disk::Strategy) -> PathBuf {
        self.vm_dir(name).join(strategy.file_name())
    }
    pub fn vm_config_drive(&self, name: &str) -> PathBuf {
        self.vm_dir(name).join("config.img")
    }
    pub fn vm_host_key(&self, name: &str) -> PathBuf {
        self.vm_dir(name).join("ssh_host_ed25519_key")
    }
    pub fn vm_console_log(&self, name: &str) -> PathBuf {
        self.vm_dir(name).join("console.log")
    }
    pub fn vm_workspace_image(&self, name: &str) -> PathBuf {
        self.vm_dir(name).join("workspace.img")
    }

    /// A running VM's runtime directory: QMP socket, pid file, API socket.
    /// Booted, saved VMs that new VMs are restored from (`template`).
    pub fn templates_dir(&self) -> PathBuf {
        self.state_dir.join("templates")
    }
    pub fn template_dir(&self, key: &str) -> PathBuf {
        self.templates_dir().join(key)
    }
    /// Where the VMM of a template being built keeps its sockets.
    pub fn template_run_dir(&self, key: &str) -> PathBuf {
        self.run_dir.join("templates").join(key)
    }
    pub fn vm_run_dir(&self, name: &str) -> PathBuf {
        self.run_dir.join("vms").join(name)
    }
    pub fn vm_pid_file(&self, name: &str) -> PathBuf {
        self.vm_run_dir(name).join("vmm.pid")
    }
    /// The VMM's own error output (why it did not start).
    pub fn vm_stderr_log(&self, name: &str) -> PathBuf {
        self.vm_run_dir(name).join("vmm.stderr")
    }
    pub fn vm_control_socket(&self, name: &str) -> PathBuf {
        self.vm_run_dir(name).join("control.sock")
    }

    /// Every version of image `name` lives under this directory:
    /// `IMAGE_DIR/NAME/VERSION/` each, and `current` naming the newest.
    pub fn image_root(&self, name: &str) -> PathBuf {
        self.image_dir.join(name)
    }
    /// One built version of image `name`, never changed while it exists.
    /// Version [`LEGACY_IMAGE_VERSION`] is an image built before versions:
    /// its files lie directly in `IMAGE_DIR/NAME/`, where the disks of the
    /// VMs made from it point.
    pub fn image_version(&self, name: &str, version: u32) -> ImagePaths {
        let root = self.image_root(name);
        if version == LEGACY_IMAGE_VERSION {
            ImagePaths::new(root)
        } else {
            ImagePaths::new(root.join(version.to_string()))
        }
    }
    /// The symlink naming the current (newest complete) version of image
    /// `name`, relative: `current -> 3`.
    pub fn image_current(&self, name: &str) -> PathBuf {
        self.image_root(name).join("current")
    }
    /// The next `current` link, made beside it and renamed over it.
    pub fn image_current_next(&self, name: &str) -> PathBuf {
        self.image_root(name).join(".current.new")
    }
    /// Where `version` is built; renamed to its version directory once
    /// complete.
    pub fn image_staging(&self, name: &str, version: u32) -> PathBuf {
        self.image_root(name).join(format!(".{version}.building"))
    }
    /// Where a version goes (by one rename) before it is deleted, so a
    /// half-deleted version never looks like a version.
    pub fn image_trash(&self, name: &str, version: u32) -> PathBuf {
        self.image_root(name).join(format!(".{version}.removing"))
    }
    /// Where a whole image goes before `image rm` deletes it.
    pub fn image_root_trash(&self, name: &str) -> PathBuf {
        self.image_dir.join(format!(".{name}.removing"))
    }
}

/// The version of an image built before versions (files directly in
/// `IMAGE_DIR/NAME/`); built versions count from 1.
pub const LEGACY_IMAGE_VERSION: u32 = 0;

/// The version a directory entry under `IMAGE_DIR/NAME/` names, if it is
/// a version directory (`1`, `2`, ...; exactly as [`Layout::image_version`]
/// writes it).
pub fn parse_image_version(file_name: &str) -> Option<u32> {
    let v: u32 = file_name.parse().ok()?;
    (v != LEGACY_IMAGE_VERSION && v.to_string() == file_name).then_some(v)
}

/// The files of one built image.
#[derive(Debug, Clone)]
pub struct ImagePaths {
    pub dir: PathBuf,
}

impl ImagePaths {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }
    /// The same kernel uncompressed (ELF), for Firecracker; images built
    /// before Firecracker support lack it.
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }
    /// The kernel a backend that boots `formats` (best first) is given:
    /// the first this image has, else the last (which the caller reports
    /// missing).
    pub fn kernel_for(&self, formats: &[crate::vmm::KernelFormat]) -> PathBuf {
        use crate::vmm::KernelFormat;
        let path = |f: &KernelFormat| match f {
            KernelFormat::BzImage => self.kernel(),
            KernelFormat::Vmlinux | KernelFormat::PvhVmlinux => self.vmlinux(),
        };
        let usable = |f: &&KernelFormat| match f {
            KernelFormat::PvhVmlinux => crate::image::vmlinux::has_pvh_entry(&self.vmlinux()),
            f => path(f).exists(),
        };
        let last = formats.last().map(path).unwrap_or_else(|| self.kernel());
        formats.iter().find(usable).map(path).unwrap_or(last)
    }
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.img")
    }
    /// The root filesystem new VMs' disks are made over: `rootfs.ext4`
    /// (raw) for a built image, `rootfs.qcow2` (the top of a chain of
    /// layers in the same directory) for one made from a VM.
    pub fn rootfs(&self) -> PathBuf {
        let layered = self.dir.join("rootfs.qcow2");
        if layered.exists() {
            return layered;
        }
        self.dir.join("rootfs.ext4")
    }
    /// Written last: an image without it is incomplete.
    pub fn manifest(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }
    pub fn exists(&self) -> bool {
        self.manifest().exists()
    }
    /// Every file of an image, the manifest first (removed first, an image
    /// missing any file is never taken for complete).
    pub fn files(&self) -> [PathBuf; 4] {
        [self.manifest(), self.kernel(), self.initrd(), self.rootfs()]
    }
}

/// Creates `dir` (and missing parents) with the given mode. A directory
/// that exists already is left exactly as it is: its mode is its owner's
/// business (`--run-dir /tmp` must keep `/tmp` sticky).
pub fn ensure_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)?;
    // The umask may have taken bits the caller asked for.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_existing_directory_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        ensure_dir(&shared, 0o700).unwrap();
        let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777;
        assert_eq!(
            mode, 0o1777,
            "the sticky, world-writable directory was changed"
        );
        let fresh = shared.join("a/b");
        ensure_dir(&fresh, 0o700).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_backend_gets_the_best_kernel_its_image_has() {
        use crate::vmm::KernelFormat::{BzImage, PvhVmlinux, Vmlinux};
        let dir = tempfile::tempdir().unwrap();
        let image = ImagePaths::new(dir.path().to_path_buf());
        // Neither: the last format, which the caller reports missing.
        assert_eq!(image.kernel_for(&[PvhVmlinux, BzImage]), image.kernel());
        assert_eq!(image.kernel_for(&[Vmlinux]), image.vmlinux());
        std::fs::write(image.kernel(), "bzImage").unwrap();
        assert_eq!(image.kernel_for(&[PvhVmlinux, BzImage]), image.kernel());
        // An ELF without a PVH entry point is Firecracker's, not QEMU's.
        std::fs::write(image.vmlinux(), "ELF").unwrap();
        assert_eq!(image.kernel_for(&[Vmlinux, BzImage]), image.vmlinux());
        assert_eq!(image.kernel_for(&[PvhVmlinux, BzImage]), image.kernel());
        assert_eq!(image.kernel_for(&[BzImage]), image.kernel());
    }
}
