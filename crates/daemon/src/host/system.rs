//! The real adapters behind the host ports.

use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use super::{BoxFuture, GuestLink, Host, Net, Provision};
use crate::guest::configdrive::{self, Identity};
use crate::guest::{ssh, GuestError};
use crate::hostnat::SystemIptables;
use crate::hostnet::{bridge, tap, NetError, Subnet};
use crate::layout::Layout;
use crate::vmm::accel::AccelChoice;

/// `ip link`/`ip tuntap`.
pub struct IpNet;

impl Net for IpNet {
    fn ensure_bridge(&self, bridge: &str, subnet: &Subnet) -> Result<(), NetError> {
        bridge::ensure(bridge, subnet)
    }
    fn ensure_tap(&self, tap: &str, bridge: &str) -> Result<(), NetError> {
        tap::ensure(tap, bridge)
    }
    fn remove_tap(&self, tap: &str) -> Result<(), NetError> {
        tap::remove(tap)
    }
    fn list_taps(&self) -> Result<Vec<String>, NetError> {
        tap::list()
    }
}

/// `ssh-keygen` and `mkfs.ext4`.
pub struct SystemProvision;

impl Provision for SystemProvision {
    fn generate_key(&self, path: &Path, comment: &str) -> Result<(), GuestError> {
        ssh::generate_key(path, comment)
    }
    fn build_config_drive(&self, identity: &Identity, dest: &Path) -> Result<(), GuestError> {
        configdrive::build(identity, dest)
    }
}

/// OpenSSH with the daemon's client key and known_hosts.
pub struct OpenSsh {
    pub layout: Layout,
}

impl GuestLink for OpenSsh {
    fn exec<'a>(
        &'a self,
        ip: &'a str,
        command: &'a str,
        stdin: Option<Vec<u8>>,
    ) -> BoxFuture<'a, Result<Output, GuestError>> {
        Box::pin(ssh::exec(&self.layout, ip, command, stdin))
    }
}

/// The real host: every adapter above, and the disk strategies and VMM
/// backends this build has.
pub fn host(layout: &Layout, accel: AccelChoice) -> Host {
    let verdict = layout.state_dir.join("accel-probe");
    Host {
        net: Arc::new(IpNet),
        nat: Arc::new(SystemIptables),
        provision: Arc::new(SystemProvision),
        guest: Arc::new(OpenSsh {
            layout: layout.clone(),
        }),
        disks: crate::disk::system_strategies(),
        backends: crate::vmm::system_backends(accel, verdict),
    }
}
