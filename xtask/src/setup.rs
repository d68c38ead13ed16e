//! `cargo xtask setup`: installs the Debian packages banger and its tests
//! need, when missing.

use anyhow::bail;

use crate::sh;

/// Debian packages the daemon, the image builder and the tests use.
const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-utils",
    "mmdebstrap",
    "e2fsprogs",
    "iproute2",
    "iptables",
    "openssh-client",
    "git",
    "jq",
    "cpio",
    "dnsutils",
    "util-linux",
];

fn installed(pkg: &str) -> bool {
    sh::capture(&["dpkg-query", "-W", "-f=${Status}", pkg])
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

pub fn run() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        eprintln!("==> setup: every package is installed");
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "missing packages {}; run as root or install them with apt-get",
            missing.join(" ")
        );
    }
    eprintln!("==> setup: installing {}", missing.join(" "));
    sh::step("apt-get update", &["apt-get", "update", "-q"])?;
    // QEMU's packages must share one version; a newer qemu-utils from
    // backports would block qemu-system-x86, so pin all to its candidate.
    let policy = sh::quiet(&["apt-cache", "policy", "qemu-system-x86"])?;
    let version = policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate: "))
        .map(str::to_string);
    let mut args: Vec<String> = [
        "apt-get",
        "install",
        "-y",
        "-q",
        "--allow-downgrades",
        "--no-install-recommends",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for p in PACKAGES {
        match (&version, *p) {
            (Some(v), "qemu-system-x86" | "qemu-utils") => args.push(format!("{p}={v}")),
            _ => args.push(p.to_string()),
        }
    }
    if let Some(v) = &version {
        args.push(format!("qemu-system-common={v}"));
        args.push(format!("qemu-system-data={v}"));
        args.push(format!("qemu-block-extra={v}"));
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    std::env::set_var("DEBIAN_FRONTEND", "noninteractive");
    sh::step("apt-get install", &argv)
}
