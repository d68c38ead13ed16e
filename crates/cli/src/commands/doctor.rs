//! `banger doctor`: what this host lacks to run banger, and how to fix it.

use std::path::Path;

use banger_hostpkgs::{apt, Plan};

struct Check {
    what: String,
    ok: bool,
    required: bool,
    fix: String,
}

impl Check {
    fn new(what: impl Into<String>, ok: bool, required: bool, fix: impl Into<String>) -> Self {
        Check {
            what: what.into(),
            ok,
            required,
            fix: fix.into(),
        }
    }
}

pub fn run(socket: &Path, json: bool) -> anyhow::Result<i32> {
    let mut checks = vec![Check::new(
        "running as root (the daemon manages taps, bridges and VMMs)",
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        true,
        "run the daemon as root (sudo banger daemon, or the systemd unit)",
    )];
    checks.extend(package_checks());
    checks.extend([
        Check::new(
            "/dev/net/tun (tap devices)",
            Path::new("/dev/net/tun").exists(),
            true,
            "modprobe tun",
        ),
        Check::new(
            "/dev/kvm (hardware acceleration; without it QEMU emulates, slowly)",
            Path::new("/dev/kvm").exists(),
            false,
            "enable virtualisation in firmware and modprobe kvm_intel or kvm_amd",
        ),
        firecracker_check(),
        Check::new(
            "the daemon answers on the socket",
            std::os::unix::net::UnixStream::connect(socket).is_ok(),
            false,
            "start it: sudo banger daemon (or systemctl start banger)",
        ),
    ]);
    if json {
        let failed = checks.iter().filter(|c| !c.ok && c.required).count();
        let rows: Vec<_> = checks
            .iter()
            .map(|c| serde_json::json!({"check": c.what, "ok": c.ok, "required": c.required, "fix": c.fix}))
            .collect();
        crate::output::print_json(&serde_json::json!({"ok": failed == 0, "checks": rows}))?;
        return Ok(i32::from(failed > 0));
    }
    let failed = report(&checks);
    if failed > 0 {
        eprintln!("banger: {failed} required check(s) failed; see the fixes above");
        return Ok(1);
    }
    Ok(0)
}

/// Whether the Firecracker backend can run here, in the words the daemon
/// uses when `--vmm firecracker` refuses to start (binary, /dev/kvm, the
/// KVM probe's verdict under the default state directory).
fn firecracker_check() -> Check {
    let layout = bangerd::layout::Layout::new("/var/lib/banger".into(), "/run/banger".into(), None);
    let fc = bangerd::vmm::firecracker::Firecracker::new(
        Default::default(),
        layout.clone(),
        layout.state_dir.join("accel-probe"),
    );
    let why = bangerd::vmm::Vmm::unusable_reason(&fc);
    Check::new(
        match &why {
            None => "Firecracker backend (optional): usable".to_string(),
            Some(why) => format!("Firecracker backend (optional): {why}"),
        },
        why.is_none(),
        false,
        "see docs/firecracker.md; without it banger uses QEMU",
    )
}

/// Prints every check; returns how many required ones failed.
fn report(checks: &[Check]) -> usize {
    let mut failed = 0;
    for c in checks {
        let mark = match (c.ok, c.required) {
            (true, _) => "ok  ",
            (false, true) => "FAIL",
            (false, false) => "warn",
        };
        println!("[{mark}] {}", c.what);
        if !c.ok && !c.fix.is_empty() {
            println!("       fix: {}", c.fix);
        }
        failed += usize::from(!c.ok && c.required);
    }
    failed
}

/// One check per missing or mismatched Debian package, all sharing the one
/// command that fixes them; without apt, the programs themselves.
fn package_checks() -> Vec<Check> {
    let policies = match apt::policies() {
        Ok(p) => p,
        Err(e) => return program_checks(&e.to_string()),
    };
    match banger_hostpkgs::plan(&policies) {
        Err(e) => vec![Check::new(
            "the Debian packages banger needs",
            false,
            true,
            e.to_string(),
        )],
        Ok(plan) if plan.is_satisfied() => vec![Check::new(
            format!(
                "Debian packages: {} installed as needed ({})",
                plan.steps.len(),
                qemu_version(&plan)
            ),
            true,
            true,
            "",
        )],
        Ok(plan) => {
            let changes: Vec<_> = plan.changes().collect();
            let last = changes.len() - 1;
            changes
                .iter()
                .enumerate()
                .map(|(i, step)| {
                    // The fix is one command for every package: print it once.
                    let fix = if i == last {
                        format!("(as root) {}", plan.fix_command())
                    } else {
                        String::new()
                    };
                    Check::new(step.describe(), false, true, fix)
                })
                .collect()
        }
    }
}

fn qemu_version(plan: &Plan) -> String {
    plan.steps
        .iter()
        .find(|s| s.package == "qemu-system-x86")
        .and_then(|s| s.installed.as_deref())
        .map(|v| format!("QEMU {v}"))
        .unwrap_or_default()
}

/// Without apt (not Debian), check the programs banger runs.
fn program_checks(why: &str) -> Vec<Check> {
    let programs = [
        ("qemu-system-x86_64", "the QEMU backend"),
        ("qemu-img", "copy-on-write disks"),
        ("mmdebstrap", "image builds"),
        ("mkfs.ext4", "root filesystems, config drives"),
        ("ip", "bridge and taps"),
        ("iptables", "NAT"),
        ("ssh-keygen", "guest access"),
    ];
    let fix = format!("install it with your distribution's packages ({why})");
    programs
        .iter()
        .map(|(bin, what)| Check::new(format!("{bin} ({what})"), which(bin), true, fix.clone()))
        .collect()
}

/// True when `program` is an executable file on PATH.
fn which(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}
