//! Shared by the integration tests: running code inside a network namespace
//! created for it, so nothing touches the host's network.

#![allow(dead_code, clippy::unwrap_used)]

use std::os::fd::AsRawFd;

pub mod daemon;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A network namespace removed on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn create(tag: &str) -> NetNs {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("banger-it-{tag}-{}-{seq}", std::process::id());
        let _ = bangerd::cmd::run("ip", &["netns", "del", &name]);
        bangerd::cmd::run("ip", &["netns", "add", &name]).unwrap();
        NetNs { name }
    }

    /// Moves the calling thread into the namespace; threads it starts
    /// afterwards (a runtime's workers, child processes) are in it too.
    pub fn enter(&self) {
        let fd = std::fs::File::open(format!("/run/netns/{}", self.name)).unwrap();
        // SAFETY: setns on a valid namespace fd affects only this thread.
        let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = bangerd::cmd::run("ip", &["netns", "del", &self.name]);
    }
}

/// Runs `f` on a thread inside a fresh namespace.
pub fn in_netns(tag: &str, f: impl FnOnce() + Send + 'static) {
    let ns = NetNs::create(tag);
    let path = ns.name.clone();
    let result = std::thread::spawn(move || {
        NetNs { name: path.clone() }.enter_and_forget();
        f();
    })
    .join();
    drop(ns);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

impl NetNs {
    fn enter_and_forget(self) {
        self.enter();
        std::mem::forget(self);
    }
}
