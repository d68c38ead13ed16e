//! The bridge all taps join; it holds the subnet's gateway address.

use super::{NetError, Subnet};
use crate::cmd;

/// Creates the bridge if missing, gives it the gateway address, brings it up.
/// Idempotent.
pub fn ensure(name: &str, subnet: &Subnet) -> Result<(), NetError> {
    if !cmd::succeeds("ip", &["link", "show", "dev", name]) {
        cmd::run("ip", &["link", "add", name, "type", "bridge"])?;
    }
    let addr = format!("{}/{}", subnet.gateway(), subnet.prefix);
    let shown = cmd::run("ip", &["-o", "-4", "addr", "show", "dev", name])?;
    if !shown.contains(&format!(" {addr} ")) {
        cmd::run("ip", &["addr", "replace", &addr, "dev", name])?;
    }
    super::no_ipv6(name)?;
    cmd::run("ip", &["link", "set", "dev", name, "up"])?;
    Ok(())
}
