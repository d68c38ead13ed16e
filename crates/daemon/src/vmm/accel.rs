//! Which accelerator QEMU should use. KVM is used only when it can boot a
//! guest: some hosts expose /dev/kvm but hang ordinary guest kernels, so the
//! check boots the guest kernel for real, with a timeout.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// `--accel` as the user gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

impl std::str::FromStr for AccelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" => Ok(AccelChoice::Tcg),
            _ => Err(format!("unknown accelerator {s:?}; use auto, kvm or tcg")),
        }
    }
}

/// Boots `kernel` under KVM with no root disk: a working KVM reaches the
/// "unable to mount root" panic within seconds and QEMU exits (panic=-1 and
/// -no-reboot); a KVM that cannot run guests hangs until the timeout.
pub fn kvm_boots_guest(kernel: &Path, timeout: Duration) -> bool {
    if !Path::new("/dev/kvm").exists() {
        return false;
    }
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "kvm", "-M", "q35", "-m", "256", "-nodefaults"])
        .args(["-display", "none", "-no-reboot", "-serial", "none"])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "panic=-1 console=ttyS0"]);
    crate::cmd::succeeds_within(&mut qemu, timeout)
}

/// The running kernel's release: a probe's verdict holds until it changes.
fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// A verdict saved by an earlier probe on this host kernel.
pub fn cached_verdict(path: &Path) -> Option<bool> {
    let text = std::fs::read_to_string(path).ok()?;
    let (release, verdict) = text.trim().split_once(' ')?;
    if release != host_release() {
        return None;
    }
    match verdict {
        "kvm" => Some(true),
        "tcg" => Some(false),
        _ => None,
    }
}

pub fn save_verdict(path: &Path, kvm: bool) {
    let line = format!("{} {}\n", host_release(), if kvm { "kvm" } else { "tcg" });
    if let Err(e) = std::fs::write(path, line) {
        tracing::warn!("saving the accelerator probe to {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_kept_per_host_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("accel-probe");
        assert_eq!(cached_verdict(&p), None);
        save_verdict(&p, false);
        assert_eq!(cached_verdict(&p), Some(false));
        save_verdict(&p, true);
        assert_eq!(cached_verdict(&p), Some(true));
        std::fs::write(&p, "0.0.0-other kvm\n").unwrap();
        assert_eq!(
            cached_verdict(&p),
            None,
            "another kernel's verdict must not count"
        );
    }
}
