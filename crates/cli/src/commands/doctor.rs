//! `banger doctor`: what this host lacks to run banger, and how to fix it.

use std::path::Path;

use bangerd::cmd::which;

struct Check {
    what: &'static str,
    ok: bool,
    required: bool,
    fix: &'static str,
}

pub fn run(socket: &Path) -> anyhow::Result<i32> {
    let tool = |what: &'static str, bin: &str, fix: &'static str| Check {
        what,
        ok: which(bin).is_some(),
        required: true,
        fix,
    };
    let apt = "apt-get install qemu-system-x86 qemu-utils mmdebstrap e2fsprogs iproute2 iptables openssh-client";
    let checks = vec![
        Check {
            what: "running as root (the daemon manages taps, bridges and VMMs)",
            // SAFETY: geteuid has no preconditions.
            ok: unsafe { libc::geteuid() } == 0,
            required: true,
            fix: "run the daemon as root (sudo banger daemon, or the systemd unit)",
        },
        tool(
            "qemu-system-x86_64 (the QEMU backend)",
            "qemu-system-x86_64",
            apt,
        ),
        tool("qemu-img (copy-on-write disks)", "qemu-img", apt),
        tool("mmdebstrap (image builds)", "mmdebstrap", apt),
        tool(
            "mkfs.ext4 (root filesystems, config drives)",
            "mkfs.ext4",
            apt,
        ),
        tool("ip (bridge and taps)", "ip", apt),
        tool("iptables (NAT)", "iptables", apt),
        tool("ssh and ssh-keygen (guest access)", "ssh-keygen", apt),
        Check {
            what: "/dev/net/tun (tap devices)",
            ok: Path::new("/dev/net/tun").exists(),
            required: true,
            fix: "modprobe tun",
        },
        Check {
            what: "/dev/kvm (hardware acceleration; without it QEMU emulates, slowly)",
            ok: Path::new("/dev/kvm").exists(),
            required: false,
            fix: "enable virtualisation in firmware and modprobe kvm_intel or kvm_amd",
        },
        Check {
            what: "firecracker (optional backend)",
            ok: which("firecracker").is_some(),
            required: false,
            fix: "install the firecracker binary on PATH (needs working KVM)",
        },
        Check {
            what: "the daemon answers on the socket",
            ok: std::os::unix::net::UnixStream::connect(socket).is_ok(),
            required: false,
            fix: "start it: sudo banger daemon (or systemctl start banger)",
        },
    ];
    let mut missing = 0;
    for c in &checks {
        let mark = if c.ok {
            "ok  "
        } else if c.required {
            "FAIL"
        } else {
            "warn"
        };
        println!("[{mark}] {}", c.what);
        if !c.ok {
            println!("       fix: {}", c.fix);
            if c.required {
                missing += 1;
            }
        }
    }
    if missing > 0 {
        eprintln!("banger: {missing} required check(s) failed; see the fixes above");
        return Ok(1);
    }
    Ok(0)
}
