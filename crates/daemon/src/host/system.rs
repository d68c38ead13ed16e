//! The real adapters behind the host ports.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use super::{BoxFuture, GuestLink, Host, Net, Provision};
use crate::guest::configdrive::{self, Identity};
use crate::guest::{ssh, GuestError};
use crate::hostnat::SystemIptables;
use crate::hostnet::{bridge, tap, NetError, Subnet};
use crate::layout::Layout;

/// `ip link`/`ip tuntap`.
pub struct IpNet;

impl Net for IpNet {
    fn ensure_bridge(&self, bridge: &str, subnet: &Subnet) -> Result<(), NetError> {
        bridge::ensure(bridge, subnet)
    }
    fn ensure_tap(&self, tap: &str, bridge: &str, owner: Option<u32>) -> Result<(), NetError> {
        tap::ensure(tap, bridge, owner)
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

    fn hand_over(&self, paths: &[PathBuf], uid: u32, gid: u32) -> Result<(), GuestError> {
        use crate::pathio::FromPathIo;
        use std::os::unix::fs::PermissionsExt;
        for p in paths {
            std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(|e| GuestError::io(p, e))?;
            let mode = if p.is_dir() { 0o700 } else { 0o600 };
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                .map_err(|e| GuestError::io(p, e))?;
        }
        Ok(())
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

    fn exec_stream<'a>(
        &'a self,
        ip: &'a str,
        command: &'a str,
        stdin: Option<Vec<u8>>,
        out: tokio::sync::mpsc::Sender<Vec<u8>>,
    ) -> BoxFuture<'a, Result<super::StreamEnd, GuestError>> {
        Box::pin(ssh::exec_stream(
            &self.layout,
            ip,
            command,
            stdin,
            out,
            crate::opstate::CHUNK,
        ))
    }

    fn exec_feed<'a>(
        &'a self,
        ip: &'a str,
        command: &'a str,
        input: tokio::sync::mpsc::Receiver<Vec<u8>>,
    ) -> BoxFuture<'a, Result<Output, GuestError>> {
        Box::pin(ssh::exec_feed(&self.layout, ip, command, input))
    }
}

/// The real host: every adapter above, and the disk strategies and VMM
/// backends this build has.
pub fn host(cfg: &crate::Config) -> Host {
    let layout = &cfg.layout;
    Host {
        net: Arc::new(IpNet),
        nat: Arc::new(SystemIptables),
        provision: Arc::new(SystemProvision),
        guest: Arc::new(OpenSsh {
            layout: layout.clone(),
        }),
        disks: crate::disk::system_strategies(),
        backends: crate::vmm::system_backends(cfg),
        clock: Arc::new(super::clock::SystemClock),
    }
}
