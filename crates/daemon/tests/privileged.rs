//! Privileged integration tests: real taps, a real bridge and real
//! qemu-img, inside a network namespace each test creates and removes.
//! Without root (or without `ip`/`qemu-img`) each test says why it skips.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::os::fd::AsRawFd;

use bangerd::disk::qcow2::Qcow2;
use bangerd::disk::CowDisk;
use bangerd::hostnet::{bridge, tap, Subnet};

fn skip_reason() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, taps)");
    }
    if bangerd::cmd::which("ip").is_none() {
        return Some("needs iproute2");
    }
    None
}

/// Runs `f` on a thread that lives inside a fresh network namespace.
fn in_netns(tag: &str, f: impl FnOnce() + Send + 'static) {
    let name = format!("banger-it-{tag}-{}", std::process::id());
    bangerd::cmd::run("ip", &["netns", "add", &name]).unwrap();
    let ns_path = format!("/run/netns/{name}");
    let result = std::thread::spawn(move || {
        let fd = std::fs::File::open(&ns_path).unwrap();
        // SAFETY: setns on a valid namespace fd; it affects only this thread,
        // whose children (ip, qemu-img) inherit the namespace.
        let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f();
    })
    .join();
    bangerd::cmd::run("ip", &["netns", "del", &name]).unwrap();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
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
        tap::ensure("banger-tap7", "banger-itbr").unwrap();
        tap::ensure("banger-tap7", "banger-itbr").unwrap();
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
