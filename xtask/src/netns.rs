//! A network namespace that exists for the life of a value: created with
//! `ip netns add`, removed (with `/etc/netns/NAME`) on drop.

use anyhow::Context;

use crate::sh;

pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn create(name: &str) -> anyhow::Result<Self> {
        let _ = sh::capture(&["ip", "netns", "del", name]);
        sh::quiet(&["ip", "netns", "add", name]).context("creating the test network namespace")?;
        let ns = NetNs {
            name: name.to_string(),
        };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Points the namespace's resolver at `server` (ip netns exec
    /// bind-mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf).
    pub fn set_resolver(&self, server: &str) -> anyhow::Result<()> {
        let dir = format!("/etc/netns/{}", self.name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            format!("{dir}/resolv.conf"),
            format!("nameserver {server}\n"),
        )?;
        Ok(())
    }

    /// `ip netns exec NAME argv...`, captured.
    pub fn capture(&self, argv: &[&str]) -> anyhow::Result<std::process::Output> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        sh::capture(&full)
    }

    pub fn run(&self, argv: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        sh::quiet(&full)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = sh::capture(&["ip", "netns", "del", &self.name]);
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
    }
}
