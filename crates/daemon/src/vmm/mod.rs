//! The VMM port. Everything backend-specific lives behind [`Vmm`]: what a
//! backend can do ([`Capabilities`]), how it boots a VM (kernel command
//! line, drive plan, accelerator), how it controls and recognises its
//! process ([`RuntimeHandle`]). The lifecycle asks; it never matches on a
//! backend's name.

pub mod accel;
pub mod firecracker;
pub mod process;
pub mod qemu;
mod qemu_snapshot;
pub mod qga;
pub mod qmp;
pub mod tap;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Cmd(#[from] crate::cmd::CmdError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("VMM control channel: {0}")]
    Control(String),
    /// The device or node the request names does not exist.
    #[error("VMM control channel: {0} not found")]
    NotFound(String),
    #[error("the VMM did not start: {0}")]
    Launch(String),
    #[error("the {backend} backend cannot {what}")]
    NotSupported {
        backend: &'static str,
        what: &'static str,
    },
}

/// Disk image formats a backend can open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

/// On every guest kernel's command line, for a faster boot:
/// `cryptomgr.notests` skips the crypto API's self-tests of each algorithm
/// as it registers (the costliest of the kernel's initcalls under
/// emulation: about 0.2 s of a 2 s kernel boot here). The self-tests guard
/// against a broken implementation, not an attacker: the code is the
/// distribution kernel's, and under emulation the instructions an
/// accelerated one uses (AES-NI, PCLMUL, CRC32) are QEMU's, which its own
/// test suite checks. A broken one would no longer be caught and replaced
/// by the generic code at boot.
pub const FAST_BOOT_ARGS: &str = "cryptomgr.notests";

/// The kernel image a backend boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// A compressed `bzImage` (QEMU, for images that have no `vmlinux`).
    BzImage,
    /// An uncompressed ELF `vmlinux` (Firecracker).
    Vmlinux,
    /// The same ELF when it has a PVH entry point, which QEMU boots without
    /// the real-mode setup and decompression of the bzImage.
    PvhVmlinux,
}

/// What a backend can do; the lifecycle plans from these, never from names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Drives can be added to and removed from a running VM. Without it,
    /// workspace drives use slots reserved at boot ([`Vmm::drive_plan`]).
    pub hotplug_drives: bool,
    /// Root disk formats, best first.
    pub disk_formats: &'static [DiskFormat],
    /// Kernel images it boots, best first: a VM gets the first its image
    /// has.
    pub kernels: &'static [KernelFormat],
    pub needs_kvm: bool,
    /// `pause`, `resume`, `snapshot` and `restore` work.
    pub snapshots: bool,
}

/// A disk attached to a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    pub path: PathBuf,
    pub format: DiskFormat,
    pub readonly: bool,
    /// What the guest sees in /sys/block/vdX/serial (how it finds a drive).
    pub serial: String,
}

/// The drives a VM boots with, by role; the backend orders them.
#[derive(Debug, Clone)]
pub struct BootDrives {
    pub root: Drive,
    pub config: Drive,
    /// The overlay workspace image, when the VM has one.
    pub workspace: Option<Drive>,
}

/// Everything a backend needs to boot one VM.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The VM's name; tagged on the VMM command line so a restarted daemon
    /// can recognise its processes.
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    /// In guest order, from [`Vmm::drive_plan`].
    pub drives: Vec<Drive>,
    pub tap: String,
    pub mac: String,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Serial console output goes here; the daemon caps its size.
    pub console_log: PathBuf,
    pub pid_file: PathBuf,
    /// The backend's control socket (QMP, or Firecracker's API).
    pub control_socket: PathBuf,
    /// The unprivileged uid and gid the VMM runs as (`None`: the daemon's
    /// own, when the daemon is not root). Its files are handed to it first.
    pub run_as: Option<(u32, u32)>,
    /// Where the VMM's own error output goes.
    pub stderr_log: PathBuf,
    /// Boot a template: no network backend (nothing leaves it), and the
    /// guest agent started, to be saved with [`Vmm::snapshot`].
    pub template: bool,
    /// Start from a template's saved state instead of booting
    /// ([`Vmm::restore`] sets it).
    pub restore_from: Option<PathBuf>,
}

/// How the daemon finds a running VMM again: its pid, and the process's
/// start time (so a reused pid is never taken for the VM's), kept in the
/// store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeHandle {
    pub pid: u32,
    /// Clock ticks since boot at which the process started (`/proc/PID/stat`).
    pub start_time: u64,
}

/// One VMM backend.
pub trait Vmm: Send + Sync {
    /// `qemu` or `firecracker`; stored with each VM.
    fn name(&self) -> &'static str;
    /// The VMM's version and accelerator, as far as they decide whether a
    /// saved state loads (templates record it).
    fn version(&self) -> String {
        String::new()
    }
    fn capabilities(&self) -> Capabilities;
    /// Why this host cannot run this backend, if it cannot.
    fn unusable_reason(&self) -> Option<String> {
        None
    }
    /// True when the next boot must first settle the accelerator (a probe
    /// that can take seconds); the lifecycle says so before [`Vmm::probe`].
    fn probe_pending(&self) -> bool {
        false
    }
    /// Settles the accelerator, booting `kernel` as a test if need be.
    fn probe(&self, _kernel: &Path) {}
    /// The guest kernel command line for a VM named `name`.
    fn kernel_cmdline(&self, name: &str) -> String;
    /// The drives in the order the guest sees them (root `/dev/vda`, config
    /// drive `/dev/vdb`, then the workspace slot).
    fn drive_plan(&self, drives: BootDrives) -> Vec<Drive>;
    /// How long a graceful stop may take before the VMM is killed.
    fn stop_timeout(&self) -> Duration;
    /// Boots the VM; returns its handle once the VMM runs.
    fn launch(&self, spec: &LaunchSpec) -> Result<RuntimeHandle, VmmError>;
    /// True while `handle` is `name`'s live VMM process.
    fn is_alive(&self, handle: &RuntimeHandle, name: &str) -> bool;
    /// Sends `signal` to the VMM; a process already gone is success.
    fn signal(&self, handle: &RuntimeHandle, signal: i32) -> Result<(), VmmError>;
    /// Whether the VMM answers on its control channel (a live process can
    /// still be wedged); a restarted daemon asks before re-adopting a VM.
    fn responds(&self, control_socket: &Path) -> bool;
    /// Asks the guest to shut down (Ctrl-Alt-Del); does not wait.
    fn request_shutdown(&self, control_socket: &Path) -> Result<(), VmmError>;
    /// Attaches `drive` to the running VM under `id` (hot-plug, or the
    /// backing file of a slot reserved at boot).
    fn attach_drive(&self, control_socket: &Path, id: &str, drive: &Drive) -> Result<(), VmmError>;
    /// Detaches drive `id`; gone is success.
    fn detach_drive(&self, control_socket: &Path, id: &str) -> Result<(), VmmError>;
    /// Removes what the backend set up for VM `name`'s run outside its run
    /// directory (Firecracker's jail), once the VMM is gone. Idempotent.
    fn release(&self, _name: &str) -> Result<(), VmmError> {
        Ok(())
    }
    /// Live VMM processes of VM `name` that the daemon holds no handle
    /// for: started just before the daemon died, or whose start failed
    /// half way. Found by the VM's tag and its run directory (the one that
    /// holds `control_socket`) on the command line.
    fn unrecorded(&self, name: &str, control_socket: &Path) -> Vec<RuntimeHandle> {
        let Some(run) = control_socket.parent() else {
            return Vec::new();
        };
        process::tagged_under(&process_tag(name), false, run)
            .into_iter()
            .filter_map(process::handle_of)
            .collect()
    }
    fn pause(&self, _control_socket: &Path) -> Result<(), VmmError> {
        Err(self.not_supported("pause a VM"))
    }
    fn resume(&self, _control_socket: &Path) -> Result<(), VmmError> {
        Err(self.not_supported("resume a VM"))
    }
    /// Saves the running VM into the directory `dest` (the backend names
    /// its files there); the VM is left paused.
    fn snapshot(&self, _control_socket: &Path, _dest: &Path) -> Result<(), VmmError> {
        Err(self.not_supported("snapshot a VM"))
    }
    /// Starts a VMM for `spec` from the snapshot directory `from`, running.
    fn restore(&self, _spec: &LaunchSpec, _from: &Path) -> Result<RuntimeHandle, VmmError> {
        Err(self.not_supported("restore a VM"))
    }
    /// Runs a program in the guest through the backend's guest agent (a VM
    /// restored from a template has one; see [`LaunchSpec::template`]).
    fn agent_exec(
        &self,
        _control_socket: &Path,
        _run: &qga::AgentRun,
        _timeout: Duration,
    ) -> Result<qga::AgentOutput, VmmError> {
        Err(self.not_supported("reach a guest agent"))
    }
    fn not_supported(&self, what: &'static str) -> VmmError {
        VmmError::NotSupported {
            backend: self.name(),
            what,
        }
    }
}

/// `--vmm`: the first usable backend, or one by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmChoice {
    Auto,
    Named(String),
}

/// The backends `--vmm` may name.
pub const BACKEND_NAMES: &[&str] = &["qemu", "firecracker"];

impl std::str::FromStr for VmmChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(VmmChoice::Auto),
            _ if BACKEND_NAMES.contains(&s) => Ok(VmmChoice::Named(s.to_string())),
            _ => Err(format!(
                "unknown VMM {s:?}; use auto or one of {}",
                BACKEND_NAMES.join(", ")
            )),
        }
    }
}

/// The backends this build has, in `--vmm auto`'s order of preference:
/// Firecracker where it can run (its binary, and KVM that boots guests),
/// else QEMU. Both keep the KVM probe's verdict in one file: it is the
/// host's answer, not a backend's.
pub fn system_backends(cfg: &crate::Config) -> Vec<Arc<dyn Vmm>> {
    let verdict = cfg.layout.state_dir.join("accel-probe");
    vec![
        Arc::new(firecracker::Firecracker::new(
            cfg.firecracker.clone(),
            cfg.layout.clone(),
            verdict.clone(),
        )),
        Arc::new(qemu::Qemu::new(cfg.accel, verdict)),
    ]
}

/// The argument the VMM command line carries to tag a VM's process.
pub fn process_tag(name: &str) -> String {
    format!("banger-vm={name}")
}
