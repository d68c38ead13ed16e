//! Host networking: the bridge, one tap per VM, and the address plan that
//! maps a slot to an IP, a MAC and a tap name.

pub mod bridge;
pub mod plan;
pub mod tap;

pub use plan::{Subnet, SubnetPlan};

/// Turns IPv6 off on `iface` (and router advertisements with it): the host
/// guards guests with IPv4 rules only, so guests must not reach it over
/// IPv6 (link-local addresses included). A host without IPv6 is done.
pub fn no_ipv6(iface: &str) -> Result<(), NetError> {
    for (key, value) in [("accept_ra", "0"), ("disable_ipv6", "1")] {
        let path = format!("/proc/sys/net/ipv6/conf/{iface}/{key}");
        match std::fs::write(&path, value) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(NetError::Sysctl { path, source: e })
            }
            _ => {}
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Cmd(#[from] crate::cmd::CmdError),
    #[error("invalid subnet {0:?}: use an IPv4 CIDR such as 172.30.0.0/24 (prefix 16-29)")]
    BadSubnet(String),
    #[error("writing {path}: {source}")]
    Sysctl {
        path: String,
        source: std::io::Error,
    },
}
