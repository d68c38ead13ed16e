//! Ports: everything the daemon does to the host, as traits bundled in
//! [`Host`] and handed to the service at construction. The real adapters
//! ([`system`]) run `ip`, `iptables`, `ssh-keygen`, `mkfs.ext4`, `ssh`,
//! `qemu-img` and the VMMs; unit tests hand in fakes, so any step of any
//! operation can fail or crash without a VM. Every call may block: the
//! service makes them through one `spawn_blocking` boundary.

pub mod clock;
pub mod system;

#[cfg(test)]
pub mod fake;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Output;
use std::sync::Arc;

use crate::disk::CowDisk;
use crate::guest::configdrive::Identity;
use crate::guest::GuestError;
use crate::hostnat::Iptables;
use crate::hostnet::{NetError, Subnet};
use crate::vmm::Vmm;

/// The bridge and the taps.
pub trait Net: Send + Sync {
    /// Creates the bridge with the gateway address, up. Idempotent.
    fn ensure_bridge(&self, bridge: &str, subnet: &Subnet) -> Result<(), NetError>;
    /// Creates `tap` on `bridge`, up, usable by `owner` (the VMM's uid)
    /// without privileges. Idempotent.
    fn ensure_tap(&self, tap: &str, bridge: &str, owner: Option<u32>) -> Result<(), NetError>;
    /// Removes `tap`; already gone is success.
    fn remove_tap(&self, tap: &str) -> Result<(), NetError>;
    /// Every banger tap on the host.
    fn list_taps(&self) -> Result<Vec<String>, NetError>;
}

/// Per-VM secrets and the config drive that carries them.
pub trait Provision: Send + Sync {
    /// Generates an ed25519 key pair at `path` and `path.pub`.
    fn generate_key(&self, path: &Path, comment: &str) -> Result<(), GuestError>;
    /// Builds the config drive image at `dest` (replacing it).
    fn build_config_drive(&self, identity: &Identity, dest: &Path) -> Result<(), GuestError>;
    /// Gives `paths` to `uid`:`gid` (the unprivileged VMM), owner-only.
    fn hand_over(&self, paths: &[PathBuf], uid: u32, gid: u32) -> Result<(), GuestError>;
}

/// A boxed future, for the async port methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Commands in a guest (OpenSSH with the daemon's key and pinned host keys).
pub trait GuestLink: Send + Sync {
    /// Runs `command` as root in the guest at `ip`, `stdin` fed to it.
    fn exec<'a>(
        &'a self,
        ip: &'a str,
        command: &'a str,
        stdin: Option<Vec<u8>>,
    ) -> BoxFuture<'a, Result<Output, GuestError>>;
    /// Like [`GuestLink::exec`], with stdout sent to `out` in chunks as it
    /// comes (large answers), never held whole.
    fn exec_stream<'a>(
        &'a self,
        ip: &'a str,
        command: &'a str,
        stdin: Option<Vec<u8>>,
        out: tokio::sync::mpsc::Sender<Vec<u8>>,
    ) -> BoxFuture<'a, Result<StreamEnd, GuestError>>;
    /// Like [`GuestLink::exec`], with stdin streamed from `input` until it
    /// closes (uploads), never held whole; `input` is dropped once the
    /// command exits.
    fn exec_feed<'a>(
        &'a self,
        ip: &'a str,
        command: &'a str,
        input: tokio::sync::mpsc::Receiver<Vec<u8>>,
    ) -> BoxFuture<'a, Result<Output, GuestError>>;
}

/// What a streamed guest command ends with: its exit status and the end
/// of its stderr.
pub type StreamEnd = (std::process::ExitStatus, Vec<u8>);

/// NAT rules go through this.
pub type NatPort = dyn Iptables + Send + Sync;

/// Every port, bundled.
#[derive(Clone)]
pub struct Host {
    pub net: Arc<dyn Net>,
    pub nat: Arc<NatPort>,
    pub provision: Arc<dyn Provision>,
    pub guest: Arc<dyn GuestLink>,
    /// Disk strategies, best first.
    pub disks: Vec<Arc<dyn CowDisk>>,
    /// VMM backends; the first usable one is `--vmm auto`'s choice.
    pub backends: Vec<Arc<dyn Vmm>>,
    /// What time it is (VM lifetimes).
    pub clock: Arc<dyn clock::Clock>,
}

impl Host {
    /// The backend named `name`, if this daemon has it.
    pub fn backend(&self, name: &str) -> Option<Arc<dyn Vmm>> {
        self.backends.iter().find(|b| b.name() == name).cloned()
    }

    /// The strategy `strategy`, if this daemon has it.
    pub fn disk(&self, strategy: crate::disk::Strategy) -> Option<Arc<dyn CowDisk>> {
        self.disks
            .iter()
            .find(|d| d.strategy() == strategy)
            .cloned()
    }
}
