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
