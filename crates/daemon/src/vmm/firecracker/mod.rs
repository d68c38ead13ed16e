//! The Firecracker backend: `firecracker --api-sock SOCK --id banger-vm-NAME`
//! (under `jailer` with `--jailer-bin`, else through `setpriv` as the VM's
//! uid), configured over its HTTP API (logger, machine config, boot source,
//! drives, network interface), then `InstanceStart`. Drives cannot be
//! hot-plugged: the drive plan reserves a slot for each workspace drive at
//! boot, backed by a one-sector placeholder until `PATCH /drives/{id}`
//! swaps the real file in. Stop is `SendCtrlAltDel` (the guest's reboot
//! ends Firecracker); snapshots go through `/snapshot/create` and
//! `/snapshot/load`. See docs/firecracker.md.

pub mod api;
pub mod http;
pub mod jail;
mod proc;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::{
    accel, process, BootDrives, Capabilities, DiskFormat, Drive, KernelFormat, LaunchSpec,
    RuntimeHandle, Vmm, VmmError,
};
use crate::cmd;
use crate::layout::Layout;
use crate::workspace::{DRIVE_ID, DRIVE_SERIAL, IMPORT_ID, IMPORT_SERIAL};
use jail::Jail;
use proc::{has_instance_id, is_executable, kvm_group, no_binary, tempdir_in, Started};

/// `--firecracker-bin` and `--jailer-bin`.
#[derive(Debug, Clone, Default)]
pub struct FirecrackerConfig {
    /// The binary (default: `firecracker` on PATH).
    pub bin: Option<PathBuf>,
    /// Run Firecracker under this jailer.
    pub jailer: Option<PathBuf>,
}

/// How long a graceful stop may take before the VMM is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long Firecracker may take to open its API socket.
pub(super) const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the KVM probe waits for a guest kernel to panic and reboot.
const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

/// Drive ids in guest order (`/dev/vda`, `/dev/vdb`, ...): root, config
/// drive, then one reserved slot per workspace drive.
pub const DRIVE_IDS: [&str; 4] = ["root", "config", DRIVE_ID, IMPORT_ID];
/// The serials of the reserved slots, named on the kernel command line.
const SLOT_SERIALS: [&str; 2] = [DRIVE_SERIAL, IMPORT_SERIAL];
/// What a reserved slot holds until a drive is swapped in: one sector of
/// zeros, in the VM's directory beside its config drive.
pub const PLACEHOLDER: &str = "empty-slot.img";

pub struct Firecracker {
    cfg: FirecrackerConfig,
    layout: Layout,
    /// Where the KVM probe's verdict is kept (per host kernel, shared with
    /// QEMU: it is the host's answer).
    verdict_file: PathBuf,
    kvm: OnceLock<bool>,
}

/// The `--id` of `name`'s Firecracker, which also tags its process.
pub fn instance_id(name: &str) -> String {
    format!("banger-vm-{name}")
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Io { what, source }
}

impl Firecracker {
    pub fn new(cfg: FirecrackerConfig, layout: Layout, verdict_file: PathBuf) -> Self {
        let kvm = OnceLock::new();
        if let Some(known) = accel::cached_verdict(&verdict_file) {
            let _ = kvm.set(known);
        }
        Firecracker {
            cfg,
            layout,
            verdict_file,
            kvm,
        }
    }

    /// The binary to run: `--firecracker-bin`, else `firecracker` on PATH.
    pub fn binary(&self) -> Option<PathBuf> {
        self.cfg.bin.clone().or_else(|| cmd::which("firecracker"))
    }

    /// The jail of VM `name`, when it runs jailed.
    fn jail(&self, name: &str, bin: &Path, run_as: Option<(u32, u32)>) -> Option<Jail> {
        self.cfg.jailer.as_ref()?;
        let (uid, gid) = run_as.unwrap_or((0, 0));
        let base = self.layout.vm_dir(name).join("jail");
        Some(Jail::new(&base, bin, &instance_id(name), uid, gid))
    }

    /// Firecracker's process for `spec`: jailed, or as `spec.run_as` with
    /// no way to gain privileges, or as the daemon.
    fn command(&self, spec: &LaunchSpec, bin: &Path, jail: Option<&Jail>) -> Command {
        let id = instance_id(&spec.name);
        if let (Some(jail), Some(jailer)) = (jail, &self.cfg.jailer) {
            let (prog, args) = jail.args(jailer, bin, &id);
            let mut c = Command::new(prog);
            c.args(args);
            return c;
        }
        let fc_args: Vec<OsString> = vec![
            "--api-sock".into(),
            spec.control_socket.clone().into(),
            "--id".into(),
            id.into(),
        ];
        let mut c = match spec.run_as {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                // KVM needs /dev/kvm's group; nothing else needs any group.
                let groups = match kvm_group() {
                    Some(g) => format!("--groups={g}"),
                    None => "--clear-groups".into(),
                };
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg(groups)
                    .arg("--no-new-privs")
                    .arg("--")
                    .arg(bin);
                c
            }
            None => Command::new(bin),
        };
        c.args(fc_args);
        c
    }

    /// Starts Firecracker for `spec` and waits for its API. The serial
    /// console is its stdout, appended to the console log.
    fn spawn(&self, spec: &LaunchSpec) -> Result<Started, VmmError> {
        let bin = self.binary().ok_or_else(|| VmmError::Launch(no_binary()))?;
        let run_dir = spec.control_socket.parent().unwrap_or(Path::new("/"));
        let _ = std::fs::remove_file(&spec.control_socket);
        let jail = self.jail(&spec.name, &bin, spec.run_as);
        if let Some(j) = &jail {
            if spec.run_as.is_none() {
                return Err(VmmError::Launch(
                    "--jailer-bin needs a daemon running as root with --vmm-uid-base".into(),
                ));
            }
            j.prepare()?;
            std::os::unix::fs::symlink(j.socket(), &spec.control_socket)
                .map_err(io(format!("linking {}", spec.control_socket.display())))?;
        }
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.console_log)
            .map_err(io(format!("opening {}", spec.console_log.display())))?;
        let stderr = std::fs::File::create(&spec.stderr_log)
            .map_err(io(format!("creating {}", spec.stderr_log.display())))?;
        let log = run_dir.join("firecracker.log");
        std::fs::write(&log, b"").map_err(io(format!("creating {}", log.display())))?;
        if let Some((uid, gid)) = spec.run_as {
            std::os::unix::fs::chown(&log, Some(uid), Some(gid))
                .map_err(io(format!("chown {}", log.display())))?;
        }
        let mut command = self.command(spec, &bin, jail.as_ref());
        command.stdin(Stdio::null()).stdout(console).stderr(stderr);
        // SAFETY: setsid is async-signal-safe; a session of its own keeps
        // Firecracker running when the daemon stops.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                libc::setsid();
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(io(format!("starting {}", bin.display())))?;
        let started = Started {
            child,
            jail,
            socket: spec.control_socket.clone(),
            log,
        };
        started.wait_socket(spec)
    }

    /// The path Firecracker is told for `host`: itself, or its name in the
    /// jail once exposed there.
    fn visible(started: &Started, host: &Path, name: &str) -> Result<PathBuf, VmmError> {
        match &started.jail {
            Some(j) => j.expose(host, name),
            None => Ok(host.to_path_buf()),
        }
    }

    /// Everything before `InstanceStart`.
    fn configure(&self, s: &Started, spec: &LaunchSpec) -> Result<(), VmmError> {
        let sock = &s.socket;
        api::logger(sock, &Self::visible(s, &s.log, "firecracker.log")?)?;
        api::machine_config(sock, spec.cpus, spec.memory_mib)?;
        let kernel = Self::visible(s, &spec.kernel, "vmlinux")?;
        let initrd = Self::visible(s, &spec.initrd, "initrd.img")?;
        api::boot_source(sock, &kernel, &initrd, &self.boot_args(spec))?;
        for (i, d) in spec.drives.iter().enumerate() {
            let id = DRIVE_IDS.get(i).copied().ok_or_else(|| {
                VmmError::Launch(format!(
                    "more drives than Firecracker's {} slots",
                    DRIVE_IDS.len()
                ))
            })?;
            let path = Self::visible(s, &d.path, &format!("drive-{id}"))?;
            api::drive(sock, id, &path, i == 0, d.readonly)?;
        }
        api::network(sock, &spec.tap, &spec.mac)
    }

    /// The kernel command line, with the reserved slots named by serial
    /// (`banger.drive.SERIAL=/dev/vdX`) for the guest's scripts.
    fn boot_args(&self, spec: &LaunchSpec) -> String {
        let mut args = spec.cmdline.clone();
        for (i, serial) in SLOT_SERIALS.iter().enumerate() {
            let letter = char::from(b'c' + i as u8);
            args.push_str(&format!(" banger.drive.{serial}=/dev/vd{letter}"));
        }
        args
    }

    /// The placeholder file of the VM whose control socket is `control`
    /// (`RUN/vms/NAME/control.sock`).
    fn placeholder_of(&self, control: &Path) -> Option<PathBuf> {
        let name = control.parent()?.file_name()?.to_str()?;
        Some(self.layout.vm_dir(name).join(PLACEHOLDER))
    }

    /// The jail of the running VM whose control socket is `control`
    /// (`RUN/vms/NAME/control.sock`), when VMs run jailed.
    fn jail_of(&self, control: &Path) -> Option<Jail> {
        let name = control.parent()?.file_name()?.to_str()?;
        let bin = self.binary().unwrap_or_else(|| "firecracker".into());
        self.jail(name, &bin, Some((0, 0)))
    }

    /// Points slot `id` at `host`: exposed in the jail first when jailed.
    fn swap(&self, control: &Path, id: &str, host: &Path) -> Result<(), VmmError> {
        let path = match self.jail_of(control) {
            Some(j) => j.expose(host, &format!("drive-{id}"))?,
            None => host.to_path_buf(),
        };
        api::swap_drive(control, id, &path)
    }

    fn probe_boot(&self, vmlinux: &Path) -> bool {
        let (Some(bin), Ok(dir)) = (self.binary(), tempdir_in(&self.layout.run_dir)) else {
            return false;
        };
        let config = serde_json::json!({
            "boot-source": {"kernel_image_path": vmlinux, "boot_args": "console=ttyS0 reboot=k panic=-1 pci=off"},
            "drives": [],
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        });
        let file = dir.join("probe.json");
        let ok = std::fs::write(&file, config.to_string()).is_ok()
            && crate::cmd::succeeds_within(
                Command::new(bin)
                    .args(["--no-api", "--id", "banger-kvm-probe", "--config-file"])
                    .arg(&file),
                PROBE_TIMEOUT,
            );
        let _ = std::fs::remove_dir_all(&dir);
        ok
    }
}

impl Vmm for Firecracker {
    fn name(&self) -> &'static str {
        "firecracker"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            hotplug_drives: false,
            disk_formats: &[DiskFormat::Raw],
            kernels: &[KernelFormat::Vmlinux],
            needs_kvm: true,
            snapshots: true,
        }
    }

    fn unusable_reason(&self) -> Option<String> {
        let Some(bin) = self.binary() else {
            return Some(no_binary());
        };
        if !is_executable(&bin) {
            return Some(format!(
                "--firecracker-bin {} is not an executable file",
                bin.display()
            ));
        }
        if let Some(j) = self.cfg.jailer.as_ref().filter(|j| !is_executable(j)) {
            return Some(format!(
                "--jailer-bin {} is not an executable file",
                j.display()
            ));
        }
        if let Err(e) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
        {
            return Some(format!(
                "Firecracker needs KVM and /dev/kvm cannot be opened ({e}); use --vmm qemu"
            ));
        }
        (self.kvm.get() == Some(&false)).then(|| {
            "KVM on this host cannot boot a guest (probed once per host kernel); use --vmm qemu"
                .into()
        })
    }

    fn probe_pending(&self) -> bool {
        self.kvm.get().is_none()
    }

    fn probe(&self, kernel: &Path) {
        self.kvm.get_or_init(|| {
            let ok = self.probe_boot(kernel);
            accel::save_verdict(&self.verdict_file, ok);
            tracing::info!(
                kvm = ok,
                "Firecracker probe: KVM {}",
                if ok {
                    "boots guests"
                } else {
                    "cannot boot a guest"
                }
            );
            ok
        });
    }

    fn kernel_cmdline(&self, _name: &str) -> String {
        // Devices are virtio-mmio; `reboot=k` makes the guest's reboot end
        // Firecracker (as -no-reboot does for QEMU).
        format!(
            "console=ttyS0 reboot=k panic=-1 pci=off root=/dev/vda rw net.ifnames=0 banger.config=/dev/vdb {}",
            crate::vmm::FAST_BOOT_ARGS
        )
    }

    fn drive_plan(&self, drives: BootDrives) -> Vec<Drive> {
        // Both workspace slots exist from boot; an empty one holds the
        // placeholder (made here once, beside the config drive).
        let placeholder = drives.config.path.with_file_name(PLACEHOLDER);
        if !placeholder.exists() {
            if let Err(e) = std::fs::write(&placeholder, [0u8; 512]) {
                tracing::warn!("creating {}: {e}", placeholder.display());
            }
        }
        let empty = |serial: &str| Drive {
            path: placeholder.clone(),
            format: DiskFormat::Raw,
            readonly: true,
            serial: serial.into(),
        };
        vec![
            drives.root,
            drives.config,
            drives.workspace.unwrap_or_else(|| empty(DRIVE_SERIAL)),
            empty(IMPORT_SERIAL),
        ]
    }

    fn stop_timeout(&self) -> Duration {
        STOP_TIMEOUT
    }

    fn launch(&self, spec: &LaunchSpec) -> Result<RuntimeHandle, VmmError> {
        if self.kvm.get() == Some(&false) {
            return Err(VmmError::Launch(
                "KVM on this host cannot boot a guest; run the daemon with --vmm qemu".into(),
            ));
        }
        self.spawn(spec)?.then(|s| {
            self.configure(s, spec)?;
            api::action(&s.socket, "InstanceStart")
        })
    }

    fn is_alive(&self, handle: &RuntimeHandle, name: &str) -> bool {
        (handle.start_time == 0 || process::start_time(handle.pid) == Some(handle.start_time))
            && !process::is_zombie(handle.pid)
            && has_instance_id(handle.pid, &instance_id(name))
    }

    fn signal(&self, handle: &RuntimeHandle, signal: i32) -> Result<(), VmmError> {
        process::signal(handle.pid, signal)
            .map_err(io(format!("signalling VMM pid {}", handle.pid)))
    }

    fn responds(&self, control_socket: &Path) -> bool {
        api::describe(control_socket).is_ok()
    }

    fn request_shutdown(&self, control_socket: &Path) -> Result<(), VmmError> {
        api::action(control_socket, "SendCtrlAltDel")
    }

    fn attach_drive(&self, control_socket: &Path, id: &str, drive: &Drive) -> Result<(), VmmError> {
        self.swap(control_socket, id, &drive.path)
    }

    fn detach_drive(&self, control_socket: &Path, id: &str) -> Result<(), VmmError> {
        let placeholder = self
            .placeholder_of(control_socket)
            .ok_or_else(|| VmmError::Control(format!("no VM owns {}", control_socket.display())))?;
        self.swap(control_socket, id, &placeholder)
    }

    fn release(&self, name: &str) -> Result<(), VmmError> {
        let base = self.layout.vm_dir(name).join("jail");
        Jail {
            base: base.clone(),
            root: base,
            uid: 0,
            gid: 0,
        }
        .remove()
    }

    fn pause(&self, control_socket: &Path) -> Result<(), VmmError> {
        api::vm_state(control_socket, "Paused")
    }

    fn resume(&self, control_socket: &Path) -> Result<(), VmmError> {
        api::vm_state(control_socket, "Resumed")
    }

    /// Pauses the VM and writes `dest/vmstate` and `dest/memory`; the VM
    /// stays paused (resume or kill it).
    fn snapshot(&self, control_socket: &Path, dest: &Path) -> Result<(), VmmError> {
        std::fs::create_dir_all(dest).map_err(io(format!("creating {}", dest.display())))?;
        api::vm_state(control_socket, "Paused")?;
        let (state, memory) = snapshot_files(dest);
        match self.jail_of(control_socket) {
            None => api::snapshot_create(control_socket, &state, &memory),
            Some(Jail { root, .. }) => {
                // Written inside the chroot, then moved out (one filesystem).
                api::snapshot_create(control_socket, Path::new("/vmstate"), Path::new("/memory"))?;
                for (inside, out) in [("vmstate", &state), ("memory", &memory)] {
                    std::fs::rename(root.join(inside), out)
                        .map_err(io(format!("moving the snapshot to {}", out.display())))?;
                }
                Ok(())
            }
        }
    }

    /// A new Firecracker for `spec` from the snapshot in `from`: loaded
    /// paused with `spec`'s tap, its drives pointed at `spec`'s files, then
    /// resumed.
    fn restore(&self, spec: &LaunchSpec, from: &Path) -> Result<RuntimeHandle, VmmError> {
        let (state, memory) = snapshot_files(from);
        self.spawn(spec)?.then(|s| {
            api::logger(&s.socket, &Self::visible(s, &s.log, "firecracker.log")?)?;
            let state = Self::visible(s, &state, "vmstate")?;
            let memory = Self::visible(s, &memory, "memory")?;
            api::snapshot_load(&s.socket, &state, &memory, &spec.tap)?;
            for (id, d) in DRIVE_IDS.iter().zip(&spec.drives) {
                let path = Self::visible(s, &d.path, &format!("drive-{id}"))?;
                api::swap_drive(&s.socket, id, &path)?;
            }
            api::vm_state(&s.socket, "Resumed")
        })
    }
}

/// The two files of a snapshot in `dir`.
pub fn snapshot_files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("vmstate"), dir.join("memory"))
}
