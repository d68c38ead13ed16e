//! `bangerd::dns::upstream::from_resolv_conf`: the host's resolv.conf into
//! the upstream resolvers the `.vm` server forwards to. The parser itself
//! is private, so the file is written and the public entry point reads it.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::OnceLock;

use bangerd::dns::upstream::from_resolv_conf;
use libfuzzer_sys::fuzz_target;

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("banger-fuzz-resolv-{}", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let ours = [IpAddr::V4(Ipv4Addr::new(172, 30, 0, 1))];
    std::fs::write(path(), data).expect("writing the resolv.conf");
    let ups = from_resolv_conf(path(), &ours);
    let text = String::from_utf8_lossy(data);
    assert!(ups.len() <= text.matches("nameserver").count());
    for up in &ups {
        assert_eq!(up.port(), 53);
        assert!(!ours.contains(&up.ip()), "never forwards to itself");
        assert!(!up.ip().is_unspecified());
    }
});
