//! The VM service: its settings, its ports, and the helpers every verb
//! shares (records, checked state changes, the blocking boundary, runtime
//! teardown). The verbs live beside it, one file per group; nothing here is
//! backend-specific.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_api::VmState;

use super::caller::Caller;
use super::error::{Context, VmError};
use super::record::VmRecord;
use super::transition;
use crate::host::Host;
use crate::hostnat;
use crate::hostnet::{Subnet, SubnetPlan};
use crate::layout::Layout;
use crate::opstate::OpTracker;
use crate::store::Store;
use crate::vmm::accel::AccelChoice;
pub use crate::vmm::VmmChoice;
use crate::vmm::{RuntimeHandle, Vmm};

pub type R<T> = Result<T, VmError>;

/// The daemon's settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub layout: Layout,
    pub bridge: String,
    pub subnet: Subnet,
    pub vmm: VmmChoice,
    pub accel: AccelChoice,
    /// How long `create`/`start` wait for SSH to answer.
    pub boot_timeout: Duration,
    /// Network namespace image builds run in (see `image::build::build`).
    pub build_netns: Option<PathBuf>,
    /// Port of the `.vm` DNS server on the bridge address; 0 turns it off.
    pub dns_port: u16,
    /// The group whose members may use the socket, when it exists.
    pub socket_group: String,
    /// VMMs run as uid (and gid) `vmm_uid_base + slot`, one per VM; 0 runs
    /// them as the daemon's user.
    pub vmm_uid_base: u32,
    /// Restore new VMs from templates (and build templates after a cold
    /// create); off, every VM boots cold.
    pub templates: bool,
    /// `--disk-strategy`: how new VMs' root disks are made unless
    /// `vm create` says.
    pub disk_strategy: crate::disk::DiskChoice,
    /// `--firecracker-bin` and `--jailer-bin`.
    pub firecracker: crate::vmm::firecracker::FirecrackerConfig,
}

pub struct VmService {
    pub cfg: Config,
    pub host: Host,
    pub store: Arc<Store>,
    pub ops: Arc<OpTracker>,
    /// One image build at a time.
    pub(super) image_lock: tokio::sync::Mutex<()>,
    /// Held while a create records the image version it takes, and while
    /// image versions are removed: a version is never removed under a VM.
    pub(super) image_pins: Arc<std::sync::Mutex<()>>,
    /// Whether the `.vm` DNS server runs (endpoints then use names).
    pub dns_running: std::sync::atomic::AtomicBool,
    /// One template build at a time (they share the template VMM uid).
    pub(super) template_lock: tokio::sync::Mutex<()>,
    /// Shapes whose template build is queued or running.
    pub(super) templates_wanted: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Runs blocking host work off the async workers: the one boundary every
/// port call crosses. A panic in it is a bug and stays a panic.
pub async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("blocking task cancelled: {e}"),
    }
}

impl VmService {
    pub fn new(cfg: Config, host: Host, store: Arc<Store>) -> Arc<Self> {
        let ops = OpTracker::new(store.clone());
        Arc::new(Self {
            cfg,
            host,
            store,
            ops,
            image_lock: tokio::sync::Mutex::new(()),
            image_pins: Arc::default(),
            dns_running: std::sync::atomic::AtomicBool::new(false),
            template_lock: tokio::sync::Mutex::new(()),
            templates_wanted: std::sync::Mutex::default(),
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.cfg.layout
    }

    pub fn plan(&self) -> SubnetPlan {
        SubnetPlan {
            subnet: self.cfg.subnet,
        }
    }

    /// The stored VM, or a not-found error naming it.
    pub fn record(&self, name: &str) -> R<VmRecord> {
        self.store
            .get_vm(name)?
            .ok_or_else(|| VmError::NotFound(name.to_string()))
    }

    /// The stored VM, if `caller` may see it; else not found.
    pub fn record_for(&self, caller: Caller, name: &str) -> R<VmRecord> {
        match self.store.get_vm(name)? {
            Some(vm) if caller.may_see(&vm) => Ok(vm),
            _ => Err(VmError::NotFound(name.to_string())),
        }
    }

    /// The backend a new VM gets, by `--vmm`.
    pub fn backend_for_new_vm(&self) -> R<Arc<dyn Vmm>> {
        let wanted = match &self.cfg.vmm {
            VmmChoice::Named(name) => Some(name.as_str()),
            VmmChoice::Auto => None,
        };
        let candidates = self
            .host
            .backends
            .iter()
            .filter(|b| wanted.is_none_or(|w| b.name() == w));
        let mut reasons = Vec::new();
        for b in candidates {
            match b.unusable_reason() {
                None => return Ok(b.clone()),
                Some(why) => reasons.push(why),
            }
        }
        Err(VmError::HostMissing(match (wanted, reasons.is_empty()) {
            (Some(w), true) => {
                format!("the {w} backend is not part of this build; run the daemon with --vmm auto")
            }
            _ => reasons.join("; "),
        }))
    }

    /// The backend that runs `vm`.
    pub fn backend_of(&self, vm: &VmRecord) -> R<Arc<dyn Vmm>> {
        self.host.backend(&vm.backend).ok_or_else(|| {
            VmError::HostMissing(format!(
                "VM {:?} uses the {} backend, which this daemon cannot drive",
                vm.name, vm.backend
            ))
        })
    }

    /// Moves `vm` to `to` if the table allows it and nobody moved it first;
    /// `vm` is updated to match.
    pub fn transition(
        &self,
        vm: &mut VmRecord,
        to: VmState,
        runtime: Option<RuntimeHandle>,
        error: Option<&str>,
    ) -> R<()> {
        if !transition::allowed(vm.state, to) {
            return Err(VmError::Transition {
                name: vm.name.clone(),
                from: vm.state,
                to,
                why: "not in the transition table",
            });
        }
        self.store
            .transition(&vm.name, vm.state, to, runtime, error)?;
        vm.state = to;
        vm.runtime = runtime;
        vm.last_error = error.map(str::to_string);
        Ok(())
    }

    /// Runs `command` in `vm`'s guest, giving up (and killing the `ssh`
    /// child) after `deadline`: nothing a guest does can hold the daemon.
    pub async fn guest_exec(
        &self,
        vm: &VmRecord,
        command: &str,
        stdin: Option<Vec<u8>>,
        deadline: Duration,
    ) -> R<std::process::Output> {
        match tokio::time::timeout(deadline, self.host.guest.exec(&vm.ip, command, stdin)).await {
            Ok(out) => Ok(out?),
            Err(_) => Err(past_deadline(vm, command, deadline)),
        }
    }

    /// Like [`VmService::guest_exec`], the command's stdout streamed to
    /// `out` in chunks.
    pub async fn guest_exec_stream(
        &self,
        vm: &VmRecord,
        command: &str,
        stdin: Option<Vec<u8>>,
        out: tokio::sync::mpsc::Sender<Vec<u8>>,
        deadline: Duration,
    ) -> R<crate::host::StreamEnd> {
        let run = self.host.guest.exec_stream(&vm.ip, command, stdin, out);
        match tokio::time::timeout(deadline, run).await {
            Ok(end) => Ok(end?),
            Err(_) => Err(past_deadline(vm, command, deadline)),
        }
    }

    /// Whether `vm`'s VMM process is alive.
    pub fn is_alive(&self, vm: &VmRecord) -> bool {
        match (&vm.runtime, self.host.backend(&vm.backend)) {
            (Some(handle), Some(backend)) => backend.is_alive(handle, &vm.name),
            _ => false,
        }
    }

    /// Whether `vm`'s VMM answers on its control channel.
    pub async fn vmm_responds(&self, vm: &VmRecord) -> bool {
        let Ok(backend) = self.backend_of(vm) else {
            return false;
        };
        let control = self.layout().vm_control_socket(&vm.name);
        blocking(move || backend.responds(&control)).await
    }

    /// Waits until `vm`'s VMM is gone; false on timeout.
    pub async fn wait_exit(&self, vm: &VmRecord, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_alive(vm) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, then waits for the VMM to be gone.
    pub async fn force_kill(&self, vm: &VmRecord) -> R<()> {
        let (Some(handle), Ok(backend)) = (vm.runtime, self.backend_of(vm)) else {
            return Ok(());
        };
        blocking(move || backend.signal(&handle, libc::SIGKILL))
            .await
            .context(|| format!("killing the VMM of {}", vm.name))?;
        if !self.wait_exit(vm, Duration::from_secs(30)).await {
            return Err(VmError::Failed(format!(
                "VMM pid {} of {:?} survived SIGKILL",
                handle.pid, vm.name
            )));
        }
        Ok(())
    }

    /// Keeps guests on the bridge unless their VM has NAT, and away from the
    /// host's own services but DNS. Without iptables that is only a warning
    /// at daemon start (`strict` false); a boot refuses to go on without it.
    pub async fn ensure_isolation(&self, strict: bool) -> R<()> {
        let (nat, bridge) = (self.host.nat.clone(), self.cfg.bridge.clone());
        let dns_port = self.cfg.dns_port;
        let confined = blocking(move || {
            hostnat::ensure_isolation(nat.as_ref(), &bridge)?;
            hostnat::guard_host(nat.as_ref(), &bridge, dns_port)
        });
        match confined.await {
            Ok(()) => Ok(()),
            Err(e) if strict => Err(e.into()),
            Err(e) => {
                tracing::warn!("cannot install the bridge isolation rule: {e}");
                Ok(())
            }
        }
    }

    /// After its VMM is gone: removes the runtime resources, then moves the
    /// VM to `to`; if they cannot all go, to `error` with the reason.
    pub async fn settle_exited(&self, vm: &mut VmRecord, to: VmState) -> R<()> {
        match self.teardown_runtime(vm).await {
            Ok(()) => self.transition(vm, to, None, None),
            Err(e) => {
                let why = e.to_string();
                if let Err(t) = self.transition(vm, VmState::Error, None, Some(&why)) {
                    tracing::warn!(vm = %vm.name, "{t}");
                }
                Err(e)
            }
        }
    }

    /// Removes what only a running VM has: run directory (pid file, control
    /// socket), tap, an active disk device. Idempotent; failures are logged
    /// and returned, the rest still runs.
    pub async fn teardown_runtime(&self, vm: &VmRecord) -> R<()> {
        let run_dir = self.layout().vm_run_dir(&vm.name);
        let net = self.host.net.clone();
        let tap = vm.tap.clone();
        let disk = self.host.disk(vm.disk);
        let disk_path = self.layout().vm_disk(&vm.name, vm.disk);
        let name = vm.name.clone();
        let backend = self.host.backend(&vm.backend);
        blocking(move || {
            let mut first: Option<VmError> = None;
            if let Some(b) = backend {
                if let Err(e) = b.release(&name) {
                    tracing::warn!(vm = %name, "releasing the VMM's resources: {e}");
                    first.get_or_insert(VmError::from(e));
                }
            }
            if let Err(e) = std::fs::remove_dir_all(&run_dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(vm = %name, "removing {}: {e}", run_dir.display());
                }
            }
            if let Err(e) = net.remove_tap(&tap) {
                tracing::warn!(vm = %name, "removing tap {tap}: {e}");
                first.get_or_insert(VmError::from(e).context(format!("removing tap {tap}")));
            }
            if let Some(disk) = disk {
                if let Err(e) = disk.deactivate(&disk_path) {
                    tracing::warn!(vm = %name, "deactivating {}: {e}", disk_path.display());
                    first.get_or_insert(e.into());
                }
            }
            first.map_or(Ok(()), Err)
        })
        .await
    }
}

/// A guest command that ran past its deadline (its `ssh` is killed).
fn past_deadline(vm: &VmRecord, command: &str, deadline: Duration) -> VmError {
    VmError::Failed(format!(
        "{} did not finish `{}` within {}s; `banger vm kill {}` stops a stuck guest",
        vm.name,
        command.split_whitespace().next().unwrap_or(command),
        deadline.as_secs(),
        vm.name
    ))
}
