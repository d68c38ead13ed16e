//! The VMM interface. Everything backend-specific lives in one module behind
//! [`Vmm`]; the rest of the daemon sees launch, graceful shutdown, process
//! liveness and signals only.

pub mod accel;
pub mod process;
pub mod qemu;
pub mod qmp;

use std::path::PathBuf;

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
    #[error("the VMM did not start: {0}")]
    Launch(String),
}

/// A disk attached at boot.
#[derive(Debug, Clone)]
pub struct Drive {
    pub path: PathBuf,
    /// `qcow2` or `raw`.
    pub format: String,
    pub readonly: bool,
    /// What the guest sees in /sys/block/vdX/serial (how it finds a drive).
    pub serial: String,
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
    /// In guest order: root disk (`/dev/vda`), config drive (`/dev/vdb`), ...
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
}

/// One VMM backend.
pub trait Vmm: Send + Sync {
    /// `qemu` or `firecracker`; stored with each VM.
    fn name(&self) -> &'static str;
    /// Boots the VM; returns the VMM's pid once it runs.
    fn launch(&self, spec: &LaunchSpec) -> Result<u32, VmmError>;
    /// Asks the guest to shut down (Ctrl-Alt-Del); does not wait.
    fn request_shutdown(&self, control_socket: &std::path::Path) -> Result<(), VmmError>;
    /// Attaches `drive` to the running VM under `id`. QEMU hot-plugs it;
    /// Firecracker, which cannot hot-plug, swaps the backing file of a
    /// drive slot attached at boot (PATCH /drives/{id}).
    fn attach_drive(
        &self,
        control_socket: &std::path::Path,
        id: &str,
        drive: &Drive,
    ) -> Result<(), VmmError>;
    /// Detaches drive `id`; gone is success.
    fn detach_drive(&self, control_socket: &std::path::Path, id: &str) -> Result<(), VmmError>;
}

/// The argument the VMM command line carries to tag a VM's process.
pub fn process_tag(name: &str) -> String {
    format!("banger-vm={name}")
}
