//! Turns a fresh Debian tree into a banger guest: the identity unit, sshd
//! and journald settings, units masked for a fast boot, no baked host keys,
//! and banger's own small initrd.

use crate::pathio::FromPathIo;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use super::cpio::Archive;
use super::ImageError;

const GUEST_INIT: &str = include_str!("assets/banger-guest-init");
const GUEST_UNIT: &str = include_str!("assets/banger-guest.service");
const AGENT: &str = include_str!("assets/banger-agent");
const AGENT_UNIT: &str = include_str!("assets/banger-agent.service");
const SSHD_CONF: &str = include_str!("assets/sshd-banger.conf");
const JOURNALD_CONF: &str = include_str!("assets/journald-banger.conf");
const SSH_UNIT_CONF: &str = include_str!("assets/ssh-banger.conf");
const INITRD_INIT: &str = include_str!("assets/initrd-init");
const GROW_ROOT_UNIT: &str = include_str!("assets/banger-grow-root.service");
const GENERATORS: &str = include_str!("assets/banger-generators");

/// Units that cost boot time and do nothing useful in a disposable VM.
/// udev is among them: the initrd loads the few drivers the VM needs.
pub const MASKED_UNITS: &[&str] = &[
    "systemd-udevd.service",
    "systemd-udev-trigger.service",
    "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket",
    "systemd-udev-settle.service",
    "e2scrub_reap.service",
    "e2scrub_all.timer",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "fstrim.timer",
    "getty@.service",
    "getty-static.service",
    "serial-getty@ttyS0.service",
    "systemd-journal-flush.service",
    "dev-hugepages.mount",
    "dev-mqueue.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
    "kmod-static-nodes.service",
    "modprobe@configfs.service",
    "modprobe@dm_mod.service",
    "modprobe@drm.service",
    "modprobe@efi_pstore.service",
    "modprobe@fuse.service",
    "modprobe@loop.service",
    "systemd-pstore.service",
    "systemd-random-seed.service",
];

/// systemd generators for what a banger VM has not: encrypted, integrity
/// or verity volumes, a GPT root, hibernation, offline updates, gettys (the
/// serial getty is masked), units asked for on the kernel command line
/// (`systemd.run=`, `systemd.mask=`, ...; banger writes the command line).
/// systemd runs every generator at each boot before it starts any unit,
/// and under emulation each costs a visible fraction of a second.
pub const MASKED_GENERATORS: &[&str] = &[
    "systemd-cryptsetup-generator",
    "systemd-integritysetup-generator",
    "systemd-veritysetup-generator",
    "systemd-gpt-auto-generator",
    "systemd-hibernate-resume-generator",
    "systemd-system-update-generator",
    "systemd-getty-generator",
    "systemd-run-generator",
    "systemd-debug-generator",
];

/// Generators that are masked too, but run by banger's own generator (a
/// shell script, `assets/banger-generators`) whenever they have input: an
/// fstab entry, an executable `/etc/rc.local`, an init script without a
/// unit. Packages an image build adds, its script, or a VM an image is
/// made from may rely on them; a banger image as built gives them nothing
/// to do, and together they took about 0.5 s of a cold boot here.
pub const GATED_GENERATORS: &[&str] = &[
    "systemd-fstab-generator",
    "systemd-rc-local-generator",
    "systemd-sysv-generator",
];

/// Kernel modules the initrd loads, in dependency order (path under
/// `lib/modules/<version>/kernel/`).
pub const INITRD_MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci",
    "drivers/block/virtio_blk",
    "net/core/failover",
    "drivers/net/net_failover",
    "drivers/net/virtio_net",
    "drivers/char/virtio_console",
];

fn write(root: &Path, rel: &str, body: &str, mode: u32) -> Result<(), ImageError> {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ImageError::io(parent, e))?;
    }
    std::fs::write(&p, body).map_err(|e| ImageError::io(&p, e))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ImageError::io(&p, e))
}

fn force_symlink(target: &str, link: &Path) -> Result<(), ImageError> {
    let _ = std::fs::remove_file(link);
    if let Some(parent) = link.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ImageError::io(parent, e))?;
    }
    symlink(target, link).map_err(|e| ImageError::io(link, e))
}

/// Applies banger's changes to the tree at `root`.
pub fn customize(root: &Path) -> Result<(), ImageError> {
    write(root, "usr/local/sbin/banger-guest-init", GUEST_INIT, 0o755)?;
    write(
        root,
        "etc/systemd/system/banger-guest.service",
        GUEST_UNIT,
        0o644,
    )?;
    force_symlink(
        "/etc/systemd/system/banger-guest.service",
        &root.join("etc/systemd/system/sysinit.target.wants/banger-guest.service"),
    )?;
    write(root, "usr/local/sbin/banger-agent", AGENT, 0o755)?;
    write(
        root,
        "etc/systemd/system/banger-agent.service",
        AGENT_UNIT,
        0o644,
    )?;
    force_symlink(
        "/etc/systemd/system/banger-agent.service",
        &root.join("etc/systemd/system/multi-user.target.wants/banger-agent.service"),
    )?;
    write(
        root,
        "etc/systemd/system/banger-grow-root.service",
        GROW_ROOT_UNIT,
        0o644,
    )?;
    force_symlink(
        "/etc/systemd/system/banger-grow-root.service",
        &root.join("etc/systemd/system/multi-user.target.wants/banger-grow-root.service"),
    )?;
    write(root, "etc/ssh/sshd_config.d/banger.conf", SSHD_CONF, 0o644)?;
    // A UTF-8 locale that needs no locale data (built into glibc), which is
    // also the file pam_env reads at every SSH login.
    write(root, "etc/default/locale", "LANG=C.UTF-8\n", 0o644)?;
    write(
        root,
        "etc/systemd/journald.conf.d/banger.conf",
        JOURNALD_CONF,
        0o644,
    )?;
    write(
        root,
        "etc/systemd/system/ssh.service.d/banger.conf",
        SSH_UNIT_CONF,
        0o644,
    )?;
    // Mount point of the config drive, and root's SSH directory.
    for (dir, mode) in [("var/lib/banger/config", 0o755), ("root/.ssh", 0o700)] {
        let p = root.join(dir);
        std::fs::create_dir_all(&p).map_err(|e| ImageError::io(&p, e))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| ImageError::io(&p, e))?;
    }
    // Tell ConditionNeedsUpdate= units (sysusers, ldconfig, catalog and
    // hwdb updates) that /etc and /var are current: they need not run at boot.
    // The format systemd-update-done writes: /usr's mtime in nanoseconds.
    let usr = root.join("usr");
    let usr_mtime = std::fs::metadata(&usr)
        .and_then(|m| m.modified())
        .map_err(|e| ImageError::io(&usr, e))?
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let stamp = format!("# banger: up to date at image build\nTIMESTAMP_NSEC={usr_mtime}\n");
    write(root, "etc/.updated", &stamp, 0o644)?;
    write(root, "var/.updated", &stamp, 0o644)?;
    let units = root.join("etc/systemd/system");
    for unit in MASKED_UNITS {
        force_symlink("/dev/null", &units.join(unit))?;
    }
    let generators = root.join("etc/systemd/system-generators");
    for generator in MASKED_GENERATORS.iter().chain(GATED_GENERATORS) {
        force_symlink("/dev/null", &generators.join(generator))?;
    }
    write(
        root,
        "etc/systemd/system-generators/banger-generators",
        GENERATORS,
        0o755,
    )?;
    for wants in [
        "getty.target.wants/getty@tty1.service",
        "multi-user.target.wants/e2scrub_reap.service",
    ] {
        let _ = std::fs::remove_file(units.join(wants));
    }
    // No dynamic message of the day: it runs scripts (uname) at every SSH
    // session, which costs a visible fraction of a second under emulation.
    let pam = root.join("etc/pam.d/sshd");
    if let Ok(text) = std::fs::read_to_string(&pam) {
        let kept: String = text
            .lines()
            .map(
                |l| match l.contains("pam_motd.so") && l.contains("motd.dynamic") {
                    true => format!("# banger: {l}\n"),
                    false => format!("{l}\n"),
                },
            )
            .collect();
        std::fs::write(&pam, kept).map_err(|e| ImageError::io(&pam, e))?;
    }
    // Host keys come per VM from the config drive; the image carries none.
    remove_matching(&root.join("etc/ssh"), "ssh_host_")?;
    // Every VM gets its own machine id at first boot.
    write(root, "etc/machine-id", "", 0o444)?;
    // The root is the initrd's; entries a build script added are kept
    // (banger-generators then runs the fstab generator for them).
    let fstab = std::fs::read_to_string(root.join("etc/fstab")).unwrap_or_default();
    let entries: String = fstab
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    write(
        root,
        "etc/fstab",
        &format!("# banger: the root is mounted by the initrd\n{entries}"),
        0o644,
    )?;
    write(root, "etc/hostname", "banger\n", 0o644)?;
    Ok(())
}

/// A kernel module's object, decompressed when the suite ships it
/// compressed (trixie: `.ko.xz`); `None` when this kernel has no such file
/// (built in, or not needed: the initrd skips what it cannot load).
fn module(moddir: &Path, m: &str) -> Result<Option<Vec<u8>>, ImageError> {
    let plain = moddir.join(format!("{m}.ko"));
    if plain.exists() {
        return std::fs::read(&plain)
            .map(Some)
            .map_err(|e| ImageError::io(&plain, e));
    }
    for (ext, tool) in [("xz", "xz"), ("zst", "zstd")] {
        let packed = moddir.join(format!("{m}.ko.{ext}"));
        if packed.exists() {
            let args: [&std::ffi::OsStr; 3] = ["-dc".as_ref(), "--".as_ref(), packed.as_os_str()];
            return Ok(Some(crate::cmd::output(tool, &args)?.stdout));
        }
    }
    Ok(None)
}

fn remove_matching(dir: &Path, prefix: &str) -> Result<(), ImageError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ImageError::io(dir, e))?;
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            let p = entry.path();
            std::fs::remove_file(&p).map_err(|e| ImageError::io(&p, e))?;
        }
    }
    Ok(())
}

/// Writes banger's initrd: static busybox, the virtio modules, and an init
/// that mounts the root disk and switches to systemd.
pub fn build_initrd(root: &Path, kernel_version: &str, dest: &Path) -> Result<(), ImageError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| ImageError::io(p, e));
    let mut a = Archive::default();
    for d in ["bin", "dev", "proc", "sys", "newroot", "modules"] {
        a.dir(d);
    }
    a.file("bin/busybox", 0o755, &read(&root.join("bin/busybox"))?);
    a.file("init", 0o755, INITRD_INIT.as_bytes());
    let moddir = root.join("lib/modules").join(kernel_version).join("kernel");
    for m in INITRD_MODULES {
        let base = m.rsplit('/').next().unwrap_or(m);
        if let Some(body) = module(&moddir, m)? {
            a.file(&format!("modules/{base}.ko"), 0o644, &body);
        }
    }
    let mut f = std::fs::File::create(dest).map_err(|e| ImageError::io(dest, e))?;
    a.finish(&mut f).map_err(|e| ImageError::io(dest, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Debian tree as far as `customize` reads it.
    fn debian_tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in [
            "usr",
            "etc/ssh",
            "etc/pam.d",
            "etc/systemd/system/getty.target.wants",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("etc/ssh/ssh_host_rsa_key"), "KEY").unwrap();
        std::fs::write(
            root.join("etc/fstab"),
            "# UNCONFIGURED FSTAB FOR BASE SYSTEM\ntmpfs /scratch tmpfs defaults 0 0\n",
        )
        .unwrap();
        std::fs::write(
            root.join("etc/pam.d/sshd"),
            "session optional pam_motd.so motd=/run/motd.dynamic\nsession optional pam_motd.so noupdate\n",
        )
        .unwrap();
        std::fs::write(
            root.join("etc/systemd/system/getty.target.wants/getty@tty1.service"),
            "",
        )
        .unwrap();
        dir
    }

    fn masked(path: &Path) -> bool {
        std::fs::read_link(path).is_ok_and(|t| t == Path::new("/dev/null"))
    }

    #[test]
    fn the_tree_boots_banger_s_way() {
        let dir = debian_tree();
        let root = dir.path();
        customize(root).unwrap();
        let generators = root.join("etc/systemd/system-generators");
        for g in MASKED_GENERATORS.iter().chain(GATED_GENERATORS) {
            assert!(masked(&generators.join(g)), "{g}");
        }
        // ...the gated ones run by banger's generator when they have input.
        let gate = std::fs::read_to_string(generators.join("banger-generators")).unwrap();
        for g in GATED_GENERATORS {
            assert!(
                gate.contains(&format!("\"$gen/{g}\" \"$@\"")),
                "{g} is never run"
            );
        }
        for u in MASKED_UNITS {
            assert!(masked(&root.join("etc/systemd/system").join(u)), "{u}");
        }
        let wants = root.join("etc/systemd/system");
        for (target, unit) in [
            ("sysinit.target.wants", "banger-guest.service"),
            ("multi-user.target.wants", "banger-agent.service"),
            ("multi-user.target.wants", "banger-grow-root.service"),
        ] {
            let link = wants.join(target).join(unit);
            let target = std::fs::read_link(&link).unwrap();
            assert_eq!(target, Path::new("/etc/systemd/system").join(unit));
            assert!(wants.join(unit).is_file(), "{unit}");
        }
        assert!(!wants.join("getty.target.wants/getty@tty1.service").exists());
        assert!(
            !root.join("etc/ssh/ssh_host_rsa_key").exists(),
            "a baked host key"
        );
        let pam = std::fs::read_to_string(root.join("etc/pam.d/sshd")).unwrap();
        assert!(pam.contains("# banger: session optional pam_motd.so motd=/run/motd.dynamic"));
        assert!(
            pam.contains("\nsession optional pam_motd.so noupdate"),
            "{pam}"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("etc/default/locale")).unwrap(),
            "LANG=C.UTF-8\n"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("etc/fstab")).unwrap(),
            "# banger: the root is mounted by the initrd\ntmpfs /scratch tmpfs defaults 0 0\n",
            "a build script's mount was dropped"
        );
        let ssh_unit =
            std::fs::read_to_string(root.join("etc/systemd/system/ssh.service.d/banger.conf"))
                .unwrap();
        assert!(ssh_unit.contains("CPUWeight=10000"), "{ssh_unit}");
        assert!(
            ssh_unit.contains(&format!(
                "ExecStartPost=-/bin/sh -c 'echo \"{}\" > /dev/console'",
                crate::guest::console::SSHD_LISTENS
            )),
            "sshd does not say what the daemon waits for: {ssh_unit}"
        );
    }

    /// Runs banger's generator over a tree at `root` (its absolute paths
    /// moved under it); returns the generators it started, with their
    /// arguments.
    fn gate(root: &Path) -> String {
        let prefix = root.to_str().unwrap();
        let script = GENERATORS
            .replace(" /", &format!(" {prefix}/"))
            .replace("=/", &format!("={prefix}/"));
        let out = std::process::Command::new("sh")
            .args(["-c", &script, "banger-generators", "n", "e", "l"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        std::fs::read_to_string(root.join("ran")).unwrap_or_default()
    }

    #[test]
    fn gated_generators_run_only_when_they_have_input() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let gens = root.join("usr/lib/systemd/system-generators");
        std::fs::create_dir_all(&gens).unwrap();
        for g in GATED_GENERATORS {
            let fake = format!("#!/bin/sh\necho \"{g} $*\" >> {}/ran\n", root.display());
            write(
                root,
                &format!("usr/lib/systemd/system-generators/{g}"),
                &fake,
                0o755,
            )
            .unwrap();
        }
        // As built: a comment in fstab, init scripts that all have units.
        write(
            root,
            "etc/fstab",
            "# banger: the root is mounted by the initrd\n",
            0o644,
        )
        .unwrap();
        write(root, "etc/init.d/ssh", "#!/bin/sh\n", 0o755).unwrap();
        write(root, "etc/init.d/hwclock.sh", "#!/bin/sh\n", 0o755).unwrap();
        write(root, "etc/init.d/README", "text\n", 0o644).unwrap();
        write(root, "lib/systemd/system/ssh.service", "", 0o644).unwrap();
        force_symlink(
            "/dev/null",
            &root.join("lib/systemd/system/hwclock.service"),
        )
        .unwrap();
        assert_eq!(gate(root), "", "a generator ran with nothing to do");

        for fstab in [
            "# comment\n\ntmpfs /tmp tmpfs defaults 0 0\n",
            "# edited in a VM, no line break at the end\ntmpfs /tmp tmpfs defaults 0 0",
        ] {
            write(root, "etc/fstab", fstab, 0o644).unwrap();
            assert_eq!(gate(root), "systemd-fstab-generator n e l\n", "{fstab:?}");
            std::fs::remove_file(root.join("ran")).unwrap();
        }

        write(root, "etc/fstab", "", 0o644).unwrap();
        write(root, "etc/rc.local", "#!/bin/sh\n", 0o644).unwrap();
        assert_eq!(gate(root), "", "rc.local is not executable");
        write(root, "etc/rc.local", "#!/bin/sh\n", 0o755).unwrap();
        assert_eq!(gate(root), "systemd-rc-local-generator n e l\n");
        std::fs::remove_file(root.join("etc/rc.local")).unwrap();
        std::fs::remove_file(root.join("ran")).unwrap();

        write(root, "etc/init.d/legacy", "#!/bin/sh\n", 0o755).unwrap();
        assert_eq!(gate(root), "systemd-sysv-generator n e l\n");
    }
}
