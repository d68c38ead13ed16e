//! Fakes for every port, sharing one in-memory [`World`]: bridges, taps,
//! iptables rules, VMM processes and their drives. Files the fakes make
//! (keys, config drives, disks) are real files in the test's directories.
//! Every call that changes the host, and every guest command, is a
//! numbered point: [`World::arm`] makes the Nth one fail, or crash the
//! daemon (a panic that unwinds the operation, as a killed daemon stops
//! mid-step: nothing after it runs).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{BoxFuture, GuestLink, Host, Net, Provision};

mod disk;
mod iptables;
mod vmm;

use crate::cmd::CmdError;
use crate::disk::Strategy;
use crate::guest::configdrive::Identity;
use crate::guest::GuestError;
use crate::hostnet::{NetError, Subnet};
use crate::pathio::FromPathIo;
use crate::vmm::qga::AgentRun;
pub use disk::FakeDisk;
pub use iptables::FakeIptables;
pub use vmm::FakeVmm;

/// The panic payload of a simulated daemon crash.
#[derive(Debug)]
pub struct SimulatedCrash(pub String);

/// What an armed fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The call returns an error.
    Fail,
    /// The daemon dies in the call.
    Crash,
}

/// A fake VMM process.
#[derive(Debug, Clone)]
pub struct FakeProc {
    pub name: String,
    pub start_time: u64,
    pub alive: bool,
    pub control: PathBuf,
    pub drives: BTreeSet<String>,
    /// The kernel it booted (which image version's).
    pub kernel: PathBuf,
}

#[derive(Default)]
struct State {
    /// What the fake guest agent ran, in order.
    agent_runs: Vec<AgentRun>,
    bridges: BTreeSet<String>,
    taps: BTreeSet<String>,
    /// (table, "-A CHAIN spec...") in order, as iptables keeps them.
    rules: Vec<(String, String)>,
    procs: BTreeMap<u32, FakeProc>,
    calls: Vec<String>,
    fault: Option<(usize, FaultKind)>,
    /// Guest commands starting with this word never finish.
    hang: Option<String>,
    /// Guest commands running now (a dropped one is a killed `ssh`).
    guest_running: usize,
    /// Control sockets of VMMs that live but no longer answer.
    wedged: BTreeSet<PathBuf>,
    /// Files handed over to a VMM's uid.
    owners: BTreeMap<PathBuf, u32>,
    /// The uid each fake VMM runs as.
    vmm_uids: BTreeMap<u32, Option<u32>>,
    /// The strategy the fake disk plays (copy when none is set).
    disk_strategy: Option<Strategy>,
    /// Disks whose device is set up (dm-snapshot), by the disk's path.
    devices: BTreeSet<PathBuf>,
    /// How far the fake clock is ahead of the system clock, in seconds.
    clock_offset: i64,
    /// What guest commands were fed on stdin (uploads), in order.
    fed: Vec<u8>,
    /// The fake VMM saves and restores VMs (templates), and the fake disk
    /// plays qcow2 overlays.
    templates: bool,
}

/// The system clock, moved on by [`World::advance_clock`].
pub struct FakeClock(World);

impl crate::host::clock::Clock for FakeClock {
    fn now(&self) -> i64 {
        crate::store::now() + self.0.state().clock_offset
    }
}

/// The fake host's state, shared by every fake port (and surviving a
/// simulated daemon crash, as the real host does).
#[derive(Clone, Default)]
pub struct World(Arc<Mutex<State>>);

impl World {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every port, faked on this world.
    pub fn host(&self) -> Host {
        Host {
            net: Arc::new(FakeNet(self.clone())),
            nat: Arc::new(FakeIptables(self.clone())),
            provision: Arc::new(FakeProvision(self.clone())),
            guest: Arc::new(FakeGuest(self.clone())),
            disks: vec![Arc::new(FakeDisk(self.clone()))],
            backends: vec![Arc::new(FakeVmm(self.clone()))],
            clock: Arc::new(FakeClock(self.clone())),
        }
    }

    /// The programs the fake guest agent ran, in order.
    pub fn agent_runs(&self) -> Vec<AgentRun> {
        self.state().agent_runs.clone()
    }

    /// Makes the fake disk play `strategy` (a device per running disk for
    /// dm-snapshot; files only for the others).
    pub fn use_disk(&self, strategy: Strategy) {
        self.state().disk_strategy = Some(strategy);
    }

    /// The disks whose device is set up.
    pub fn devices(&self) -> BTreeSet<PathBuf> {
        self.state().devices.clone()
    }

    /// Makes the fake VMM save and restore VMs and answer through a guest
    /// agent, and the fake disk make qcow2 overlays: templates are used.
    pub fn enable_templates(&self) {
        let mut st = self.state();
        st.templates = true;
        st.disk_strategy = Some(Strategy::Qcow2);
    }

    /// Moves the fake clock `secs` seconds ahead of the system clock.
    pub fn advance_clock(&self, secs: i64) {
        self.state().clock_offset += secs;
    }

    /// Forgets the points counted so far; the next call is point 0.
    pub fn reset_calls(&self) {
        self.state().calls.clear();
    }

    /// Makes point `index` (counted from the last reset) fail or crash.
    pub fn arm(&self, index: usize, kind: FaultKind) {
        self.state().fault = Some((index, kind));
    }

    pub fn disarm(&self) {
        self.state().fault = None;
    }

    /// The bytes uploads fed to guest commands so far.
    pub fn fed(&self) -> Vec<u8> {
        self.state().fed.clone()
    }

    /// The points reached since the last reset, in order.
    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    /// Counts a point; fails or crashes there when armed for it.
    fn hit(&self, point: &str) -> Result<(), String> {
        let fired = {
            let mut st = self.state();
            let index = st.calls.len();
            st.calls.push(point.to_string());
            match st.fault {
                Some((at, kind)) if at == index => {
                    st.fault = None;
                    Some(kind)
                }
                _ => None,
            }
        };
        match fired {
            None => Ok(()),
            Some(FaultKind::Fail) => Err(format!("injected failure at {point}")),
            Some(FaultKind::Crash) => std::panic::panic_any(SimulatedCrash(point.to_string())),
        }
    }

    pub fn taps(&self) -> BTreeSet<String> {
        self.state().taps.clone()
    }

    pub fn rules(&self) -> Vec<(String, String)> {
        self.state().rules.clone()
    }

    pub fn live_procs(&self) -> BTreeMap<u32, FakeProc> {
        self.state()
            .procs
            .iter()
            .filter(|(_, p)| p.alive)
            .map(|(pid, p)| (*pid, p.clone()))
            .collect()
    }

    /// Makes guest commands that start with `word` hang forever.
    pub fn hang_guest(&self, word: &str) {
        self.state().hang = Some(word.to_string());
    }

    /// Guest commands in flight.
    pub fn guest_running(&self) -> usize {
        self.state().guest_running
    }

    /// The uid `path` was handed over to, if any.
    pub fn owner_of(&self, path: &Path) -> Option<u32> {
        self.state().owners.get(path).copied()
    }

    /// The uid the live VMM of `name` runs as (`None`: the daemon's).
    pub fn vmm_uid(&self, name: &str) -> Option<Option<u32>> {
        let st = self.state();
        st.procs
            .iter()
            .find(|(_, p)| p.alive && p.name == name)
            .and_then(|(pid, _)| st.vmm_uids.get(pid).copied())
    }

    /// Makes `name`'s VMM stop answering on its control channel.
    pub fn wedge_vmm(&self, name: &str) {
        let mut st = self.state();
        let controls: Vec<PathBuf> = st
            .procs
            .values()
            .filter(|p| p.name == name)
            .map(|p| p.control.clone())
            .collect();
        st.wedged.extend(controls);
    }

    /// Kills a fake VMM behind the daemon's back (a guest that powered off).
    pub fn exit_process(&self, name: &str) {
        for p in self.state().procs.values_mut() {
            if p.name == name {
                p.alive = false;
            }
        }
    }
}

pub(super) fn failed(message: String) -> CmdError {
    CmdError::Failed {
        command: "fake".into(),
        status: "exit status: 1".into(),
        stderr: message,
    }
}

struct FakeNet(World);

impl Net for FakeNet {
    fn ensure_bridge(&self, bridge: &str, _subnet: &Subnet) -> Result<(), NetError> {
        self.0.hit("net.ensure_bridge").map_err(failed)?;
        self.0.state().bridges.insert(bridge.to_string());
        Ok(())
    }
    fn ensure_tap(&self, tap: &str, _bridge: &str, _owner: Option<u32>) -> Result<(), NetError> {
        self.0.hit("net.ensure_tap").map_err(failed)?;
        self.0.state().taps.insert(tap.to_string());
        Ok(())
    }
    fn remove_tap(&self, tap: &str) -> Result<(), NetError> {
        self.0.hit("net.remove_tap").map_err(failed)?;
        self.0.state().taps.remove(tap);
        Ok(())
    }
    fn list_taps(&self) -> Result<Vec<String>, NetError> {
        self.0.hit("net.list_taps").map_err(failed)?;
        Ok(self.0.taps().into_iter().collect())
    }
}

struct FakeProvision(World);

fn write(path: &Path, body: &str) -> Result<(), GuestError> {
    std::fs::write(path, body).map_err(|e| GuestError::io(path, e))
}

impl Provision for FakeProvision {
    fn generate_key(&self, path: &Path, comment: &str) -> Result<(), GuestError> {
        self.0
            .hit("provision.generate_key")
            .map_err(GuestError::Failed)?;
        write(path, "fake private key\n")?;
        write(
            &crate::guest::ssh::pub_path(path),
            &format!("ssh-ed25519 AAAAfakekey {comment}\n"),
        )
    }
    fn hand_over(&self, paths: &[PathBuf], uid: u32, _gid: u32) -> Result<(), GuestError> {
        self.0
            .hit("provision.hand_over")
            .map_err(GuestError::Failed)?;
        let mut st = self.0.state();
        for p in paths {
            st.owners.insert(p.clone(), uid);
        }
        Ok(())
    }
    fn build_config_drive(&self, identity: &Identity, dest: &Path) -> Result<(), GuestError> {
        self.0
            .hit("provision.config_drive")
            .map_err(GuestError::Failed)?;
        write(dest, &identity.hostname)
    }
}

struct FakeGuest(World);

impl GuestLink for FakeGuest {
    fn exec<'a>(
        &'a self,
        _ip: &'a str,
        command: &'a str,
        _stdin: Option<Vec<u8>>,
    ) -> BoxFuture<'a, Result<Output, GuestError>> {
        let word = command.split_whitespace().next().unwrap_or("").to_string();
        let hit = self.0.hit(&format!("guest.exec {word}"));
        let hang = self.0.state().hang.as_deref() == Some(word.as_str());
        let world = self.0.clone();
        Box::pin(async move {
            hit.map_err(GuestError::Failed)?;
            let _running = Running::start(&world);
            if hang {
                std::future::pending::<()>().await;
            }
            Ok(Output {
                status: ExitStatus::from_raw(0),
                stdout: FakeGuest::answer(&word),
                stderr: Vec::new(),
            })
        })
    }

    fn exec_stream<'a>(
        &'a self,
        ip: &'a str,
        command: &'a str,
        stdin: Option<Vec<u8>>,
        out: tokio::sync::mpsc::Sender<Vec<u8>>,
    ) -> BoxFuture<'a, Result<super::StreamEnd, GuestError>> {
        let whole = self.exec(ip, command, stdin);
        Box::pin(async move {
            let output = whole.await?;
            // In small chunks, so a test sees the answer streamed.
            for chunk in output.stdout.chunks(7) {
                out.send(chunk.to_vec())
                    .await
                    .map_err(|_| GuestError::Failed("the client left".into()))?;
            }
            Ok((output.status, output.stderr))
        })
    }

    fn exec_feed<'a>(
        &'a self,
        _ip: &'a str,
        command: &'a str,
        mut input: tokio::sync::mpsc::Receiver<Vec<u8>>,
    ) -> BoxFuture<'a, Result<Output, GuestError>> {
        let word = command.split_whitespace().next().unwrap_or("").to_string();
        let hit = self.0.hit(&format!("guest.exec_feed {word}"));
        let world = self.0.clone();
        Box::pin(async move {
            hit.map_err(GuestError::Failed)?;
            let _running = Running::start(&world);
            while let Some(chunk) = input.recv().await {
                world.state().fed.extend_from_slice(&chunk);
            }
            // The one upload there is, `vm cp`, answers how it placed it.
            Ok(Output {
                status: ExitStatus::from_raw(0),
                stdout: b"staged\n".to_vec(),
                stderr: Vec::new(),
            })
        })
    }
}

impl FakeGuest {
    /// The fake's answer to `word` (what `exec` returns).
    fn answer(word: &str) -> Vec<u8> {
        match word {
            "ss" => {
                b"tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:((\"sshd\",pid=1,fd=3))\n".to_vec()
            }
            "sh" => b"diff --git a/x b/x\n".to_vec(),
            _ => Vec::new(),
        }
    }
}

/// Counts a guest command while its future lives.
struct Running(World);

impl Running {
    fn start(world: &World) -> Running {
        world.state().guest_running += 1;
        Running(world.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.state().guest_running -= 1;
    }
}
