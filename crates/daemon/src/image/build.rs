//! Builds an image from Debian packages: mmdebstrap a tree of the asked
//! suite (the base packages, the caller's extra ones, the caller's build
//! script run in the tree as a customize hook), apply banger's changes,
//! take out the kernel, write our initrd, pack the tree into an ext4 root
//! filesystem. Each build is a new version of the image, which appears only
//! when complete (see [`super::catalog`]).

use crate::pathio::FromPathIo;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use super::{catalog, customize, ImageError, Manifest};
use crate::cmd;
use crate::layout::{ImagePaths, Layout};
use banger_api::ImageBuildSpec;

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

/// mmdebstrap's log of the last build of an image, in `IMAGE_DIR/NAME/`.
pub const BUILD_LOG: &str = ".build.log";

/// Where the build script is put in the tree while it runs.
const SCRIPT_IN_TREE: &str = "/tmp/banger-build-script";

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
    spec: &ImageBuildSpec,
    netns: Option<&Path>,
    report: Report<'_>,
) -> Result<u32, ImageError> {
    spec.validate()
        .map_err(|e| ImageError::Invalid(e.message))?;
    catalog::install(layout, name, |staging| {
        build_into(name, spec, staging, netns, report)
    })
}

fn build_into(
    name: &str,
    spec: &ImageBuildSpec,
    out: &ImagePaths,
    netns: Option<&Path>,
    report: Report<'_>,
) -> Result<(), ImageError> {
    let tree = out.dir.join("tree");
    let script = match &spec.script {
        Some(text) => {
            let path = out.dir.join("build-script");
            std::fs::write(&path, text).map_err(|e| ImageError::io(&path, e))?;
            Some(path)
        }
        None => None,
    };
    let script_sha256 = script.as_deref().map(sha256).transpose()?;
    report("debootstrap", 2);
    let made = mmdebstrap(&tree, spec, script.as_deref(), netns, report);
    if let Some(p) = &script {
        let _ = std::fs::remove_file(p);
    }
    made?;
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
        suite: spec.suite.clone(),
        built_at: crate::store::now(),
        guest_agent: true,
        restore_protocol: crate::guest::restore::PROTOCOL,
        announces_sshd: true,
        includes: spec.includes.clone(),
        script_sha256,
        from_vm: None,
    };
    let json = serde_json::to_string_pretty(&manifest).unwrap_or_default();
    std::fs::write(out.manifest(), json).map_err(|e| ImageError::io(&out.manifest(), e))?;
    report("done", 100);
    Ok(())
}

/// The packages of an image: the base set, then the caller's.
pub fn packages(spec: &ImageBuildSpec) -> Vec<String> {
    let mut all: Vec<String> = PACKAGES.iter().map(|p| p.to_string()).collect();
    for p in &spec.includes {
        if !all.contains(p) {
            all.push(p.clone());
        }
    }
    all
}

/// mmdebstrap's customize hooks that run the build script in the tree
/// (mmdebstrap's own `upload`, then `chroot`), and remove it after.
pub fn script_hooks(script: &Path) -> Vec<String> {
    vec![
        format!(
            "--customize-hook=upload {} {SCRIPT_IN_TREE}",
            script.display()
        ),
        format!("--customize-hook=chroot \"$1\" /bin/sh {SCRIPT_IN_TREE}"),
        format!("--customize-hook=rm -f \"$1{SCRIPT_IN_TREE}\""),
    ]
}

/// The SHA-256 of a file, in hex (`sha256sum`).
fn sha256(path: &Path) -> Result<String, ImageError> {
    let out = cmd::run("sha256sum", &[path])?;
    out.split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| ImageError::Failed("sha256sum printed nothing".into()))
}

fn mmdebstrap(
    tree: &Path,
    spec: &ImageBuildSpec,
    script: Option<&Path>,
    netns: Option<&Path>,
    report: Report<'_>,
) -> Result<(), ImageError> {
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
        .arg(format!("--include={}", packages(spec).join(",")))
        .arg("--dpkgopt=path-exclude=/usr/share/doc/*")
        .arg("--dpkgopt=path-exclude=/usr/share/man/*")
        .arg("--dpkgopt=path-exclude=/usr/share/locale/*")
        .args(script.map(script_hooks).unwrap_or_default())
        .arg(&spec.suite)
        .arg(tree)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| cmd::spawn_error("mmdebstrap", &[], e))?;
    // The whole log goes beside the image's versions: the error can only
    // carry its end.
    let log_path = tree
        .parent()
        .and_then(Path::parent)
        .map(|root| root.join(BUILD_LOG));
    let mut log = log_path
        .as_ref()
        .and_then(|p| std::fs::File::create(p).ok());
    let mut tail = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        // Every line is read to the end, whatever its bytes (a line that is
        // not UTF-8 must not stop the reading: mmdebstrap would die of
        // SIGPIPE at its next write).
        let lines = BufReader::new(stderr).split(b'\n').map_while(Result::ok);
        for line in lines.map(|l| String::from_utf8_lossy(&l).into_owned()) {
            if let Some(f) = log.as_mut() {
                let _ = writeln!(f, "{line}");
            }
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
        let whole = log_path
            .map(|p| format!("; the whole log is {}", p.display()))
            .unwrap_or_default();
        return Err(ImageError::Invalid(format!(
            "mmdebstrap failed ({status}): {}; check the package names and the build script{whole}",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_packages_follow_the_base_set_once() {
        let spec = ImageBuildSpec {
            includes: vec!["jq".into(), "git".into()],
            ..ImageBuildSpec::default()
        };
        let all = packages(&spec);
        assert_eq!(all.len(), PACKAGES.len() + 1);
        assert_eq!(all.last().map(String::as_str), Some("jq"));
    }

    #[test]
    fn the_script_runs_in_the_tree_as_a_customize_hook() {
        let hooks = script_hooks(Path::new("/x/build-script"));
        assert_eq!(
            hooks[0],
            "--customize-hook=upload /x/build-script /tmp/banger-build-script"
        );
        assert!(hooks[1].contains(r#"chroot "$1" /bin/sh /tmp/banger-build-script"#));
    }

    #[test]
    fn the_script_digest_is_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "abc").unwrap();
        assert_eq!(
            sha256(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
