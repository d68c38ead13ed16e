//! Per-VM tap devices: create (idempotent), remove (gone is success), list.

use super::plan::TAP_PREFIX;
use super::NetError;
use crate::cmd;

/// Creates `tap` on `bridge` and brings it up. Idempotent.
pub fn ensure(tap: &str, bridge: &str) -> Result<(), NetError> {
    if !cmd::succeeds("ip", &["link", "show", "dev", tap]) {
        cmd::run("ip", &["tuntap", "add", "dev", tap, "mode", "tap"])?;
    }
    cmd::run("ip", &["link", "set", "dev", tap, "master", bridge])?;
    cmd::run("ip", &["link", "set", "dev", tap, "up"])?;
    Ok(())
}

/// Removes `tap`; a tap that is already gone is success.
pub fn remove(tap: &str) -> Result<(), NetError> {
    if cmd::succeeds("ip", &["link", "show", "dev", tap]) {
        cmd::run("ip", &["link", "del", "dev", tap])?;
    }
    Ok(())
}

/// Every banger tap on the host (for reconciliation).
pub fn list() -> Result<Vec<String>, NetError> {
    let out = cmd::run("ip", &["-o", "link", "show", "type", "tun"])?;
    Ok(parse_link_names(&out)
        .into_iter()
        .filter(|n| n.starts_with(TAP_PREFIX))
        .collect())
}

/// Takes `ip -o link show` output and returns the interface names.
fn parse_link_names(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_ip_link_output() {
        let out =
            "5: banger-tap1: <BROADCAST,MULTICAST,UP> mtu 1500 qdisc\n7: eth0@if8: <UP> mtu 1500\n";
        assert_eq!(super::parse_link_names(out), ["banger-tap1", "eth0"]);
    }
}
