//! Builds an image from Debian packages: mmdebstrap a bookworm tree, apply
//! banger's changes, take out the kernel, write our initrd, pack the tree
//! into an ext4 root filesystem. Each build is a new version of the image,
//! which appears only when complete (see [`super::catalog`]).

use crate::pathio::FromPathIo;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use super::{catalog, customize, ImageError, Manifest};
use crate::cmd;
use crate::layout::{ImagePaths, Layout};

/// Debian packages in every image.
pub const PACKAGES: &[&str] = &[
    "systemd-sysv",
    "openssh-server",
    "iproute2",
    "git",
    "ca-certificates",
    "procps",
    "linux-image-cloud-amd64",
    "busybox-static",
    "e2fsprogs",
    "iptables",
    "tar",
    "less",
    // Templates: restored clones are given their identity through it.
    "qemu-guest-agent",
];

pub const SUITE: &str = "bookworm";

/// Reports a phase and a percentage.
pub type Report<'a> = &'a (dyn Fn(&str, u8) + Send + Sync);

/// Builds a new version of image `name` under the image directory and
/// makes it current (see [`catalog::install`]: the version appears only
/// when complete; a failed build leaves the previous one as it was).
/// Returns the version. The caller holds the image build lock.
///
/// `netns`, when given, is a network namespace (e.g. `/proc/1/ns/net`) that
/// mmdebstrap runs in, for a daemon that lives in a namespace without a
/// route to the Debian mirror.
pub fn build(
    layout: &Layout,
    name: &str,
    netns: Option<&Path>,
    report: Report<'_>,
) -> Result<u32, ImageError> {
    catalog::install(layout, name, |staging| {
        build_into(name, staging, netns, report)
    })
}

fn build_into(
    name: &str,
    out: &ImagePaths,
    netns: Option<&Path>,
    report: Report<'_>,
) -> Result<(), ImageError> {
    let tree = out.dir.join("tree");
    report("debootstrap", 2);
    mmdebstrap(&tree, netns, report)?;
    report("customize", 70);
    customize::customize(&tree)?;
    let kernel_version = kernel_version(&tree)?;
    let boot = tree.join("boot");
    let vmlinuz = boot.join(format!("vmlinuz-{kernel_version}"));
    std::fs::copy(&vmlinuz, out.kernel()).map_err(|e| ImageError::io(&vmlinuz, e))?;
    // The same kernel uncompressed, for Firecracker.
    super::vmlinux::write(&vmlinuz, &out.vmlinux())?;
    report("initrd", 75);
    customize::build_initrd(&tree, &kernel_version, &out.initrd())?;
    report("rootfs", 80);
    let size_mib = (tree_size(&tree) / (1 << 20)) * 2 + 512;
    crate::ext4::make(
        &tree,
        &out.rootfs(),
        "banger-root",
        &format!("{size_mib}M"),
        &[],
    )?;
    std::fs::remove_dir_all(&tree).map_err(|e| ImageError::io(&tree, e))?;
    let manifest = Manifest {
        name: name.to_string(),
        kernel: kernel_version,
        suite: SUITE.to_string(),
        built_at: crate::store::now(),
        guest_agent: true,
    };
    let json = serde_json::to_string_pretty(&manifest).unwrap_or_default();
    std::fs::write(out.manifest(), json).map_err(|e| ImageError::io(&out.manifest(), e))?;
    report("done", 100);
    Ok(())
}

fn mmdebstrap(tree: &Path, netns: Option<&Path>, report: Report<'_>) -> Result<(), ImageError> {
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg("mmdebstrap");
            c
        }
        None => Command::new("mmdebstrap"),
    };
    let mut child = command
        .arg("--variant=minbase")
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg("--dpkgopt=path-exclude=/usr/share/doc/*")
        .arg("--dpkgopt=path-exclude=/usr/share/man/*")
        .arg("--dpkgopt=path-exclude=/usr/share/locale/*")
        .arg(SUITE)
        .arg(tree)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| cmd::spawn_error("mmdebstrap", &[], e))?;
    let mut tail = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(msg) = line.strip_prefix("I: ") {
                report(&format!("debootstrap: {msg}"), progress_of(msg));
            }
            tail.push(line);
            if tail.len() > 5 {
                tail.remove(0);
            }
        }
    }
    let status = child.wait().map_err(|e| ImageError::io(tree, e))?;
    if !status.success() {
        return Err(ImageError::Invalid(format!(
            "mmdebstrap failed ({status}): {}",
            tail.join(" | ")
        )));
    }
    Ok(())
}

/// Rough progress through mmdebstrap's phases.
fn progress_of(msg: &str) -> u8 {
    if msg.starts_with("downloading") {
        10
    } else if msg.starts_with("extracting") {
        25
    } else if msg.starts_with("installing essential") {
        35
    } else if msg.starts_with("installing remaining") {
        50
    } else if msg.starts_with("cleaning") {
        65
    } else {
        5
    }
}

fn kernel_version(tree: &Path) -> Result<String, ImageError> {
    let dir = tree.join("lib/modules");
    let mut versions: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| ImageError::io(&dir, e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    versions.sort();
    versions
        .pop()
        .ok_or_else(|| ImageError::Invalid("the image has no kernel".into()))
}

fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}
