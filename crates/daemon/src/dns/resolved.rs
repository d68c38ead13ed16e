//! Host-side resolution of `.vm`: when systemd-resolved runs, point the
//! bridge link at our DNS server with a `~vm` routing domain, so the host's
//! own `ssh dev.vm` resolves. Without resolved, see docs/networking.md.

use std::net::Ipv4Addr;
use std::path::Path;

use crate::cmd;

pub fn register(bridge: &str, server: Ipv4Addr) {
    if !Path::new("/run/systemd/resolve").is_dir() || cmd::which("resolvectl").is_none() {
        tracing::info!(
            "systemd-resolved is not running; the host resolves .vm only if configured by hand"
        );
        return;
    }
    let server = server.to_string();
    let steps: [&[&str]; 2] = [&["dns", bridge, &server], &["domain", bridge, "~vm"]];
    for args in steps {
        if let Err(e) = cmd::run("resolvectl", args) {
            tracing::warn!("resolvectl {}: {e}", args.join(" "));
            return;
        }
    }
    tracing::info!(bridge, "systemd-resolved routes .vm to banger's DNS");
}
