//! Privileged integration tests: real taps, a real bridge and real
//! qemu-img, inside a network namespace each test creates and removes.
//! Without root (or without `ip`/`qemu-img`) each test says why it skips.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use bangerd::disk::qcow2::Qcow2;
use bangerd::disk::CowDisk;
use bangerd::hostnet::{bridge, tap, Subnet};
use common::in_netns;

fn skip_reason() -> Option<&'static str> {
    if !common::is_root() {
        return Some("needs root (network namespaces, taps)");
    }
    if bangerd::cmd::which("ip").is_none() {
        return Some("needs iproute2");
    }
    None
}

#[test]
fn bridge_and_taps_are_idempotent_and_listed() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    in_netns("net", || {
        let subnet: Subnet = "10.99.0.0/24".parse().unwrap();
        bridge::ensure("banger-itbr", &subnet).unwrap();
        bridge::ensure("banger-itbr", &subnet).unwrap();
        let addrs =
            bangerd::cmd::run("ip", &["-o", "-4", "addr", "show", "dev", "banger-itbr"]).unwrap();
        assert_eq!(addrs.matches("10.99.0.1/24").count(), 1, "{addrs}");
        // No IPv6 on the bridge: guests must not reach the host that way.
        let v6 =
            bangerd::cmd::run("ip", &["-o", "-6", "addr", "show", "dev", "banger-itbr"]).unwrap();
        assert!(v6.trim().is_empty(), "the bridge has IPv6: {v6}");
        tap::ensure("banger-tap7", "banger-itbr", None).unwrap();
        tap::ensure("banger-tap7", "banger-itbr", None).unwrap();
        // Owned by a VMM's uid, it is made again for a new owner, then kept.
        tap::ensure("banger-tap7", "banger-itbr", Some(2_000_000_007)).unwrap();
        tap::ensure("banger-tap7", "banger-itbr", Some(2_000_000_007)).unwrap();
        let detail =
            bangerd::cmd::run("ip", &["-d", "-o", "link", "show", "dev", "banger-tap7"]).unwrap();
        assert!(detail.contains("user 2000000007"), "{detail}");
        bangerd::cmd::run("ip", &["tuntap", "add", "dev", "other-tap", "mode", "tap"]).unwrap();
        assert_eq!(
            tap::list().unwrap(),
            ["banger-tap7"],
            "only our taps are listed"
        );
        let link = bangerd::cmd::run("ip", &["-o", "link", "show", "dev", "banger-tap7"]).unwrap();
        assert!(link.contains("master banger-itbr"), "{link}");
        tap::remove("banger-tap7").unwrap();
        tap::remove("banger-tap7").unwrap();
        assert!(tap::list().unwrap().is_empty());
    });
}

#[test]
fn qcow2_overlay_is_constant_time_and_backed_by_the_image() {
    if bangerd::cmd::which("qemu-img").is_none() {
        eprintln!("skipped: needs qemu-img (apt-get install qemu-utils)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.ext4");
    let f = std::fs::File::create(&base).unwrap();
    f.set_len(2 << 30).unwrap();
    let disk = dir.path().join("vm.qcow2");
    let t = std::time::Instant::now();
    Qcow2.create(&base, &disk, 4).unwrap();
    assert!(t.elapsed().as_secs() < 5);
    let info = bangerd::cmd::run(
        "qemu-img",
        &["info", "--output=json", disk.to_str().unwrap()],
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["virtual-size"], 4u64 << 30);
    assert_eq!(v["backing-filename-format"], "raw");
    assert!(std::fs::metadata(&disk).unwrap().len() < 1 << 20);
    assert!(
        Qcow2.create(&base, &disk, 4).is_err(),
        "an existing disk must not be replaced"
    );
    Qcow2.remove(&disk).unwrap();
    Qcow2.remove(&disk).unwrap();
    assert!(!disk.exists());
}

/// A loop-mounted XFS made with `-m reflink=1`, removed (unmounted,
/// detached, deleted) when dropped.
struct XfsMount {
    dir: tempfile::TempDir,
    loop_dev: String,
}

impl XfsMount {
    fn make() -> XfsMount {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("xfs.img");
        std::fs::File::create(&backing)
            .unwrap()
            .set_len(512 << 20)
            .unwrap();
        bangerd::cmd::run(
            "mkfs.xfs",
            &["-q", "-m", "reflink=1", backing.to_str().unwrap()],
        )
        .unwrap();
        let loop_dev =
            bangerd::cmd::run("losetup", &["--find", "--show", backing.to_str().unwrap()])
                .unwrap()
                .trim()
                .to_string();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        bangerd::cmd::run("mount", &[loop_dev.as_str(), mnt.to_str().unwrap()]).unwrap();
        XfsMount { dir, loop_dev }
    }

    fn mnt(&self) -> std::path::PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for XfsMount {
    fn drop(&mut self) {
        let _ = bangerd::cmd::run("umount", &[self.mnt().to_str().unwrap_or("")]);
        let _ = bangerd::cmd::run("losetup", &["--detach", self.loop_dev.as_str()]);
    }
}

#[test]
fn reflink_clones_share_blocks_on_xfs_and_go_without_trace() {
    use bangerd::disk::reflink::{self, Reflink};
    if !common::is_root() {
        eprintln!("skipped: needs root (a loop device and a mount)");
        return;
    }
    if bangerd::cmd::which("mkfs.xfs").is_none() {
        eprintln!("skipped: needs mkfs.xfs (apt-get install xfsprogs)");
        return;
    }
    let fs = XfsMount::make();
    let dir = fs.mnt();
    assert!(
        reflink::supported_in(&dir),
        "XFS with reflink=1 must support FICLONE"
    );
    assert!(Reflink.available(&dir));
    let leftovers = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(leftovers, 0, "the probe left files");
    let base = dir.join("rootfs.ext4");
    let data: Vec<u8> = (0..64u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&base, &data).unwrap();
    let vm = dir.join("vms/dev");
    std::fs::create_dir_all(&vm).unwrap();
    let dest = vm.join("root.img");
    bangerd::cmd::run("sync", &[] as &[&str]).unwrap();
    let before = bangerd::cmd::run("df", &["--output=used", "-B1", dir.to_str().unwrap()]).unwrap();
    let started = std::time::Instant::now();
    Reflink.create(&base, &dest, 1).unwrap();
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(2),
        "a clone took {took:?}"
    );
    assert_eq!(
        std::fs::metadata(&dest).unwrap().len(),
        1 << 30,
        "grown to the disk size"
    );
    let mut head = vec![0u8; data.len()];
    std::io::Read::read_exact(&mut std::fs::File::open(&dest).unwrap(), &mut head).unwrap();
    assert_eq!(head, data, "the clone reads as the image");
    bangerd::cmd::run("sync", &[] as &[&str]).unwrap();
    let after = bangerd::cmd::run("df", &["--output=used", "-B1", dir.to_str().unwrap()]).unwrap();
    let used = |s: &str| -> u64 { s.lines().nth(1).unwrap().trim().parse().unwrap() };
    let grew = used(&after).saturating_sub(used(&before));
    assert!(
        grew < 8 << 20,
        "the clone copied blocks ({grew} bytes more)"
    );
    // Writing to the clone leaves the image as it was.
    let mut f = std::fs::OpenOptions::new().write(true).open(&dest).unwrap();
    std::io::Write::write_all(&mut f, b"changed").unwrap();
    drop(f);
    assert_eq!(std::fs::read(&base).unwrap()[..7], data[..7]);
    assert!(
        Reflink.create(&base, &dest, 1).is_err(),
        "replaced an existing disk"
    );
    // Stop (deactivate) keeps the disk; delete removes it, twice is fine.
    assert_eq!(Reflink.activate(&base, &dest).unwrap(), dest);
    Reflink.deactivate(&dest).unwrap();
    assert!(dest.exists());
    Reflink.remove(&dest).unwrap();
    Reflink.remove(&dest).unwrap();
    assert_eq!(
        std::fs::read_dir(&vm).unwrap().count(),
        0,
        "delete left files"
    );
}

#[test]
fn dm_snapshot_disks_are_made_and_removed_where_device_mapper_exists() {
    use bangerd::disk::dmsnap::{DmSnapshot, DM_CONTROL};
    if !common::is_root() {
        eprintln!("skipped: needs root (loop and device-mapper devices)");
        return;
    }
    if !std::path::Path::new(DM_CONTROL).exists() {
        eprintln!("skipped: {DM_CONTROL} is absent: this kernel has no device-mapper");
        return;
    }
    let dm = DmSnapshot::default();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("rootfs.ext4");
    std::fs::write(&base, vec![7u8; 4 << 20]).unwrap();
    let vm = dir.path().join("vms/dmtest");
    std::fs::create_dir_all(&vm).unwrap();
    let dest = vm.join("root.cow");
    dm.create(&base, &dest, 1).unwrap();
    let dev = dm.activate(&base, &dest).unwrap();
    let mut head = vec![0u8; 4096];
    std::io::Read::read_exact(&mut std::fs::File::open(&dev).unwrap(), &mut head).unwrap();
    assert!(
        head.iter().all(|b| *b == 7),
        "the snapshot reads as the image"
    );
    let mut f = std::fs::OpenOptions::new().write(true).open(&dev).unwrap();
    std::io::Write::write_all(&mut f, b"changed").unwrap();
    drop(f);
    dm.deactivate(&dest).unwrap();
    assert!(!dev.exists(), "stop left the device");
    let loops = bangerd::cmd::run("losetup", &["--list", "--noheadings"]).unwrap();
    assert!(
        !loops.contains(dir.path().to_str().unwrap()),
        "loops left: {loops}"
    );
    // Started again (as after a host reboot): the change is still there.
    let dev = dm.activate(&base, &dest).unwrap();
    let mut head = vec![0u8; 7];
    std::io::Read::read_exact(&mut std::fs::File::open(&dev).unwrap(), &mut head).unwrap();
    assert_eq!(&head, b"changed");
    assert_eq!(
        std::fs::read(&base).unwrap()[..7],
        [7u8; 7],
        "the image changed"
    );
    dm.remove(&dest).unwrap();
    assert!(
        !dev.exists() && !dest.exists(),
        "delete left the device or the COW file"
    );
}
