//! A new image version from a stopped VM's disk (`image create --from-vm`),
//! in time that grows with what the VM changed, not with the image:
//!
//! - a qcow2 disk (QEMU) becomes a layer: its overlay is copied (sparse;
//!   shared blocks where the filesystem can reflink) as the version's
//!   `rootfs.qcow2`, rebased (`qemu-img rebase -u`, header only) onto the
//!   layers below it, which are hard links to the parent version's files
//!   (`base.ext4`, `layer1.qcow2`, ...; backing names are relative, so each
//!   version's directory holds its whole chain). Image files are never
//!   written after they are made, so a hard link is a copy in constant
//!   time, and removing the parent version later leaves the chain whole.
//! - a raw disk (the `copy` strategy) is copied with `cp --reflink=auto
//!   --sparse=always`: constant time where the filesystem reflinks,
//!   otherwise a full copy.
//!
//! The kernel and initrd are the parent version's (hard links too).

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{ImageError, Manifest};
use crate::cmd;
use crate::disk::{probe, Strategy};
use crate::layout::ImagePaths;
use crate::pathio::FromPathIo;
use crate::vmm::DiskFormat;

/// What the new version is made of.
pub struct Source<'a> {
    /// The version the VM was made from.
    pub parent: &'a ImagePaths,
    /// The VM's root disk (stopped: nothing writes it).
    pub disk: &'a Path,
    /// The disk of the template the VM was restored from, which its disk
    /// is made over (a layer between the parent's and the VM's).
    pub template_disk: Option<&'a Path>,
    pub strategy: Strategy,
    /// The manifest to write last (suite, packages and kernel of the
    /// parent; `from_vm` set).
    pub manifest: Manifest,
}

/// Writes the new version into `out` (a staging directory), manifest last.
pub fn populate(out: &ImagePaths, src: &Source<'_>) -> Result<(), ImageError> {
    link_or_copy(&src.parent.kernel(), &out.kernel())?;
    // The uncompressed kernel (Firecracker; QEMU's faster boot), when the
    // parent has one.
    if src.parent.vmlinux().exists() {
        link_or_copy(&src.parent.vmlinux(), &out.vmlinux())?;
    }
    link_or_copy(&src.parent.initrd(), &out.initrd())?;
    match src.strategy {
        Strategy::Qcow2 => layer(out, src.parent, src.disk, src.template_disk)?,
        Strategy::Copy | Strategy::Reflink => {
            copy(src.disk, &out.dir.join("rootfs.ext4"))?;
        }
        Strategy::DmSnapshot => {
            return Err(ImageError::Invalid(
                "a dm-snapshot disk holds only the changes; image create --from-vm needs a qcow2 or copy disk".into(),
            ))
        }
    }
    let json = serde_json::to_string_pretty(&src.manifest).unwrap_or_default();
    std::fs::write(out.manifest(), json).map_err(|e| ImageError::io(&out.manifest(), e))
}

/// The parent's chain, linked into `out`, with the VM's overlay on top.
fn layer(
    out: &ImagePaths,
    parent: &ImagePaths,
    disk: &Path,
    template_disk: Option<&Path>,
) -> Result<(), ImageError> {
    let mut below = link_chain(parent, &out.dir)?;
    if let Some(template) = template_disk {
        // A copy, not a link: its backing name is rewritten.
        let n = below
            .strip_prefix("layer")
            .and_then(|r| r.strip_suffix(".qcow2"))
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0);
        let name = format!("layer{}.qcow2", n + 1);
        let dest = out.dir.join(&name);
        copy(template, &dest)?;
        plain_qcow2(&dest, template)?;
        rebase_header(&dest, &out.dir, &below)?;
        below = name;
    }
    let top = out.dir.join("rootfs.qcow2");
    copy(disk, &top)?;
    plain_qcow2(&top, disk)?;
    rebase_header(&top, &out.dir, &below)
}

/// Refuses a copied layer (`copy`, of `from`) whose header keeps its data
/// in an external file: banger never makes one, the VM's disk is its VMM's
/// to write, and root's `qemu-img` (this rebase, a later raw conversion)
/// would open and read whatever file it names. The copy is checked, not
/// the VM's file, so nothing can change it in between.
fn plain_qcow2(copy: &Path, from: &Path) -> Result<(), ImageError> {
    if probe::external_data_file(copy) {
        return Err(ImageError::Invalid(format!(
            "{}: its qcow2 header names an external data file, which banger never makes (its VMM may have been taken over); no image is made from it",
            from.display()
        )));
    }
    Ok(())
}

/// `qemu-img rebase -u`: `top` (qcow2) names `below` (in `dir`) as its
/// backing file; no data is read or written.
fn rebase_header(top: &Path, dir: &Path, below: &str) -> Result<(), ImageError> {
    let below_format = probe::format(&dir.join(below));
    let args: [&std::ffi::OsStr; 9] = [
        "rebase".as_ref(),
        "-u".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-F".as_ref(),
        below_format.as_str().as_ref(),
        "-b".as_ref(),
        below.as_ref(),
        top.as_os_str(),
    ];
    cmd::run("qemu-img", &args)?;
    Ok(())
}

/// Links the parent's layers into `dir`; returns the file name of the
/// top one, which the new layer is rebased onto.
fn link_chain(parent: &ImagePaths, dir: &Path) -> Result<String, ImageError> {
    let base = dir.join("base.ext4");
    let parent_top = parent.rootfs();
    if probe::format(&parent_top) == DiskFormat::Raw {
        link_or_copy(&parent_top, &base)?;
        return Ok("base.ext4".into());
    }
    link_or_copy(&parent.dir.join("base.ext4"), &base)?;
    let mut n = 1;
    loop {
        let name = format!("layer{n}.qcow2");
        let from = parent.dir.join(&name);
        if !from.exists() {
            break;
        }
        link_or_copy(&from, &dir.join(&name))?;
        n += 1;
    }
    // The parent's top keeps its relative backing name (the layer below
    // it, linked above under the same name).
    let name = format!("layer{n}.qcow2");
    link_or_copy(&parent_top, &dir.join(&name))?;
    Ok(name)
}

/// A hard link (constant time); a copy where the files are on different
/// filesystems.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), ImageError> {
    match std::fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => copy(from, to),
        Err(e) => Err(ImageError::io(from, e)),
    }
}

/// `cp --reflink=auto --sparse=always`: shared blocks where the filesystem
/// can, holes kept; then flushed to disk.
fn copy(from: &Path, to: &Path) -> Result<(), ImageError> {
    let args: [&std::ffi::OsStr; 5] = [
        "--reflink=auto".as_ref(),
        "--sparse=always".as_ref(),
        "--".as_ref(),
        from.as_os_str(),
        to.as_os_str(),
    ];
    cmd::run("cp", &args)?;
    // Readable by every VMM's uid (the VM's disk was its VMM's alone).
    std::fs::set_permissions(to, Permissions::from_mode(0o644))
        .map_err(|e| ImageError::io(to, e))?;
    std::fs::File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(|e| ImageError::io(to, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn have(program: &str) -> bool {
        let found = cmd::which(program).is_some();
        if !found {
            eprintln!("skipped: {program} is not installed (qemu-utils)");
        }
        found
    }

    fn io(file: &Path, command: &str) -> String {
        let out = std::process::Command::new("qemu-io")
            .args(["-c", command])
            .arg(file)
            .output()
            .expect("qemu-io");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{command}: {text}");
        text
    }

    fn qemu_img(args: &[&str]) {
        cmd::run("qemu-img", args).expect("qemu-img");
    }

    /// A built version: raw root filesystem, kernels, initrd.
    fn built(dir: &Path) -> ImagePaths {
        let p = ImagePaths::new(dir.to_path_buf());
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(p.kernel(), "kernel").unwrap();
        std::fs::write(p.vmlinux(), "vmlinux").unwrap();
        std::fs::write(p.initrd(), "initrd").unwrap();
        let f = std::fs::File::create(p.rootfs()).unwrap();
        f.set_len(8 << 20).unwrap();
        p
    }

    /// A VM's qcow2 disk over `base` with `pattern` written at `offset`.
    fn vm_disk(dir: &Path, base: &Path, pattern: &str, offset: u64) -> std::path::PathBuf {
        let disk = dir.join("root.qcow2");
        let _ = std::fs::remove_file(&disk);
        let fmt = probe::format(base).as_str();
        let b = base.to_str().unwrap();
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            fmt,
            "-b",
            b,
            disk.to_str().unwrap(),
            "16M",
        ]);
        io(&disk, &format!("write -P {pattern} {offset} 64k"));
        // A VM's disk is its VMM's alone.
        std::fs::set_permissions(&disk, Permissions::from_mode(0o600)).unwrap();
        disk
    }

    fn manifest() -> Manifest {
        Manifest {
            name: "mine".into(),
            kernel: "k".into(),
            suite: "bookworm".into(),
            built_at: 1,
            guest_agent: false,
            restore_protocol: 0,
            announces_sshd: false,
            includes: Vec::new(),
            script_sha256: None,
            from_vm: Some("dev (default v1)".into()),
        }
    }

    fn make(out: &Path, parent: &ImagePaths, disk: &Path) -> ImagePaths {
        let out = ImagePaths::new(out.to_path_buf());
        std::fs::create_dir_all(&out.dir).unwrap();
        let src = Source {
            parent,
            disk,
            template_disk: None,
            strategy: Strategy::Qcow2,
            manifest: manifest(),
        };
        populate(&out, &src).expect("populate");
        out
    }

    #[test]
    fn a_qcow2_disk_becomes_a_layer_that_outlives_its_parent() {
        if !have("qemu-img") || !have("qemu-io") {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let v1 = built(&t.path().join("default/1"));
        let vm = t.path().join("vm");
        std::fs::create_dir_all(&vm).unwrap();
        let disk = vm_disk(&vm, &v1.rootfs(), "0x5a", 0);
        let mine1 = make(&t.path().join("mine/1"), &v1, &disk);
        assert_eq!(mine1.rootfs(), mine1.dir.join("rootfs.qcow2"));
        let mode = std::fs::metadata(mine1.rootfs())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644, "every VMM's uid reads the image");
        assert!(mine1.exists());
        assert_eq!(std::fs::read_to_string(mine1.kernel()).unwrap(), "kernel");
        assert_eq!(
            std::fs::read_to_string(mine1.vmlinux()).unwrap(),
            "vmlinux",
            "the uncompressed kernel comes along"
        );
        // A VM of the new image, and an image made from that VM: a chain.
        let disk2 = vm_disk(&vm, &mine1.rootfs(), "0x6b", 1 << 20);
        let mine2 = make(&t.path().join("mine/2"), &mine1, &disk2);
        assert!(mine2.dir.join("layer1.qcow2").exists());
        // The parents go (image rm, prune); the chains stay whole.
        std::fs::remove_dir_all(t.path().join("default")).unwrap();
        std::fs::remove_dir_all(&mine1.dir).unwrap();
        let top = mine2.rootfs();
        assert!(io(&top, "read -P 0x5a 0 64k").contains("read 65536/65536"));
        assert!(io(&top, "read -P 0x6b 1M 64k").contains("read 65536/65536"));
        assert!(io(&top, "read -P 0 2M 64k").contains("read 65536/65536"));
        assert_eq!(probe::virtual_size(&top), 16 << 20);
    }

    #[test]
    fn a_disk_whose_header_names_a_data_file_is_refused() {
        if !have("qemu-img") {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let v1 = built(&t.path().join("default/1"));
        // A host file the daemon can read and a VMM should never see.
        let secret = t.path().join("secret");
        std::fs::write(&secret, "host secret").unwrap();
        std::fs::File::options()
            .append(true)
            .open(&secret)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        // The disk as a VMM that a guest took over could rewrite it.
        let disk = t.path().join("root.qcow2");
        let opt = format!("data_file={}", secret.display());
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &opt,
            disk.to_str().unwrap(),
            "16M",
        ]);
        assert!(probe::external_data_file(&disk));
        let out = ImagePaths::new(t.path().join("mine/1"));
        std::fs::create_dir_all(&out.dir).unwrap();
        let src = Source {
            parent: &v1,
            disk: &disk,
            template_disk: None,
            strategy: Strategy::Qcow2,
            manifest: manifest(),
        };
        let e = populate(&out, &src).unwrap_err().to_string();
        assert!(e.contains("external data file"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        assert!(!out.exists(), "no version is made");
        // An ordinary layer is not taken for one.
        let plain = vm_disk(t.path(), &v1.rootfs(), "0x5a", 0);
        assert!(!probe::external_data_file(&plain));
    }

    #[test]
    fn a_raw_disk_is_copied_and_a_dm_snapshot_refused() {
        let t = tempfile::tempdir().unwrap();
        let v1 = built(&t.path().join("default/1"));
        let disk = t.path().join("root.img");
        std::fs::write(&disk, b"the vm's filesystem").unwrap();
        let out = ImagePaths::new(t.path().join("mine/1"));
        std::fs::create_dir_all(&out.dir).unwrap();
        let mut src = Source {
            parent: &v1,
            disk: &disk,
            template_disk: None,
            strategy: Strategy::Copy,
            manifest: manifest(),
        };
        populate(&out, &src).unwrap();
        assert_eq!(std::fs::read(out.rootfs()).unwrap(), b"the vm's filesystem");
        src.strategy = Strategy::DmSnapshot;
        let other = ImagePaths::new(t.path().join("mine/2"));
        std::fs::create_dir_all(&other.dir).unwrap();
        let e = populate(&other, &src).unwrap_err().to_string();
        assert!(e.contains("qcow2 or copy"), "{e}");
        assert!(!other.exists());
    }
}
