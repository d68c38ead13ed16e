//! Per-VM tap devices: create (idempotent), remove (gone is success), list.

use super::plan::TAP_PREFIX;
use super::NetError;
use crate::cmd;

/// Creates `tap` on `bridge` and brings it up, owned by `owner` (so a VMM
/// running as that uid can open it without privileges). Idempotent: a tap
/// with another owner is made again.
pub fn ensure(tap: &str, bridge: &str, owner: Option<u32>) -> Result<(), NetError> {
    let exists = cmd::succeeds("ip", &["link", "show", "dev", tap]);
    if exists && owner_of(tap) != owner {
        cmd::run("ip", &["link", "del", "dev", tap])?;
    }
    if !exists || owner_of(tap) != owner {
        let mut args = vec!["tuntap", "add", "dev", tap, "mode", "tap"];
        let uid = owner.map(|u| u.to_string());
        if let Some(uid) = &uid {
            args.extend(["user", uid.as_str()]);
        }
        cmd::run("ip", &args)?;
    }
    super::no_ipv6(tap)?;
    cmd::run("ip", &["link", "set", "dev", tap, "master", bridge])?;
    cmd::run("ip", &["link", "set", "dev", tap, "up"])?;
    Ok(())
}

/// The uid that owns `tap` (`None` for no owner, or no such tap), from
/// `ip -d link` (netlink: right in any network namespace).
fn owner_of(tap: &str) -> Option<u32> {
    let out = cmd::run("ip", &["-d", "-o", "link", "show", "dev", tap]).ok()?;
    parse_owner(&out)
}

fn parse_owner(detail: &str) -> Option<u32> {
    let mut words = detail.split_whitespace();
    words.find(|w| *w == "user")?;
    words.next()?.parse().ok()
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
    fn reads_the_owner_from_ip_link_details() {
        let owned = "2: t1: <BROADCAST> mtu 1500 \\    tun type tap pi off vnet_hdr off persist on user 2000000007 addrgenmode eui64";
        assert_eq!(super::parse_owner(owned), Some(2_000_000_007));
        let free =
            "3: t2: <BROADCAST> mtu 1500 \\    tun type tap pi off persist on addrgenmode eui64";
        assert_eq!(super::parse_owner(free), None);
    }

    #[test]
    fn parses_ip_link_output() {
        let out =
            "5: banger-tap1: <BROADCAST,MULTICAST,UP> mtu 1500 qdisc\n7: eth0@if8: <UP> mtu 1500\n";
        assert_eq!(super::parse_link_names(out), ["banger-tap1", "eth0"]);
    }
}
