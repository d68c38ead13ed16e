//! The QEMU backend: direct kernel boot on q35 with virtio-pci devices, QMP
//! for control, the serial console appended to a file. KVM when it can run
//! a guest here (decided once per host kernel by [`accel`]), else TCG.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::json;

use super::accel::{self, AccelChoice};
use super::{
    process, process_tag, qemu_snapshot, qga, qmp, BootDrives, Capabilities, DiskFormat, Drive,
    KernelFormat, LaunchSpec, RuntimeHandle, Vmm, VmmError,
};
use crate::cmd;

/// How long a graceful stop may take before the VMM is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(90);

/// How long the KVM probe waits for a guest kernel to panic.
const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

/// QEMU, with KVM or TCG software emulation.
pub struct Qemu {
    accel: AccelChoice,
    /// `qemu-system-x86_64 --version`, asked once.
    version: OnceLock<String>,
    /// Where the KVM probe's verdict is kept (per host kernel).
    verdict_file: PathBuf,
    kvm: OnceLock<bool>,
}

impl Qemu {
    pub fn new(accel: AccelChoice, verdict_file: PathBuf) -> Self {
        let kvm = OnceLock::new();
        match accel {
            AccelChoice::Kvm => drop(kvm.set(true)),
            AccelChoice::Tcg => drop(kvm.set(false)),
            AccelChoice::Auto => {
                if let Some(known) = accel::cached_verdict(&verdict_file) {
                    let _ = kvm.set(known);
                }
            }
        }
        Qemu {
            accel,
            version: OnceLock::new(),
            verdict_file,
            kvm,
        }
    }

    /// KVM or TCG; settles it (probing) if nobody has yet.
    fn kvm(&self, kernel: &Path) -> bool {
        *self.kvm.get_or_init(|| {
            let ok = matches!(self.accel, AccelChoice::Auto)
                && accel::kvm_boots_guest(kernel, PROBE_TIMEOUT);
            accel::save_verdict(&self.verdict_file, ok);
            tracing::info!(
                kvm = ok,
                "accelerator probe: KVM {}",
                if ok {
                    "boots guests"
                } else {
                    "cannot boot a guest; using TCG"
                }
            );
            ok
        })
    }

    /// The full argument vector for `spec`.
    pub fn args(&self, spec: &LaunchSpec) -> Vec<OsString> {
        let kvm = self.kvm(&spec.kernel);
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
        let accel = if kvm { "kvm" } else { "tcg" };
        let cpu = if kvm { "host" } else { "max" };
        let name = format!("{},process=banger-{}", spec.name, spec.name);
        push(&["-name", &name, "-accel", accel, "-M", "q35", "-cpu", cpu]);
        push(&[
            "-smp",
            &spec.cpus.to_string(),
            "-m",
            &spec.memory_mib.to_string(),
        ]);
        push(&[
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]);
        a.push("-kernel".into());
        a.push(spec.kernel.clone().into());
        a.push("-initrd".into());
        a.push(spec.initrd.clone().into());
        a.push("-append".into());
        let template = if spec.template {
            " banger.template=1"
        } else {
            ""
        };
        a.push(format!("{} {}{template}", spec.cmdline, process_tag(&spec.name)).into());
        for (i, d) in spec.drives.iter().enumerate() {
            let mut drive = OsString::from("file=");
            drive.push(escape_commas(&d.path));
            drive.push(format!(
                ",if=none,id=drive{i},format={},readonly={},cache=writeback,discard=unmap",
                d.format.as_str(),
                if d.readonly { "on" } else { "off" }
            ));
            a.push("-drive".into());
            a.push(drive);
            a.push("-device".into());
            a.push(format!("virtio-blk-pci,drive=drive{i},serial={}", d.serial).into());
        }
        // A PCIe slot for drives attached later (workspaces).
        push_dev(&mut a, "pcie-root-port,id=hotplug0,bus=pcie.0,chassis=1");
        // The daemon opens the tap and hands QEMU the descriptor: QEMU
        // needs no access to /dev/net/tun (root's alone on some hosts). A
        // template's network card is on a hub with nothing else on it.
        a.push("-netdev".into());
        a.push(match spec.template {
            false => format!("tap,id=net0,fd={TAP_FD}").into(),
            true => "hubport,id=net0,hubid=0".into(),
        });
        a.push("-device".into());
        a.push(format!("virtio-net-pci,netdev=net0,mac={}", spec.mac).into());
        // The guest agent's port (templates and the VMs restored from them),
        // and a generation id that changes on every restore (guest kernels
        // with the vmgenid driver reseed their RNG on it).
        push_dev(&mut a, "virtio-serial-pci,id=vser0");
        a.push("-chardev".into());
        let mut agent = OsString::from("socket,id=agent0,server=on,wait=off,path=");
        agent.push(escape_commas(&agent_socket(&spec.control_socket)));
        a.push(agent);
        push_dev(
            &mut a,
            "virtserialport,bus=vser0.0,chardev=agent0,name=org.qemu.guest_agent.0",
        );
        push_dev(&mut a, "vmgenid,guid=auto");
        a.push("-chardev".into());
        let mut chardev = OsString::from("file,id=serial0,append=on,path=");
        chardev.push(escape_commas(&spec.console_log));
        a.push(chardev);
        a.push("-serial".into());
        a.push("chardev:serial0".into());
        a.push("-qmp".into());
        let mut qmp = OsString::from("unix:");
        qmp.push(escape_commas(&spec.control_socket));
        qmp.push(",server=on,wait=off");
        a.push(qmp);
        a.push("-pidfile".into());
        a.push(spec.pid_file.clone().into());
        // Device emulation runs under QEMU's seccomp filter: no obsolete
        // calls, no privilege changes, no new processes, no scheduler or
        // resource changes.
        a.push("-sandbox".into());
        a.push(SANDBOX.into());
        if spec.restore_from.is_some() {
            a.push("-incoming".into());
            a.push(format!("fd:{}", qemu_snapshot::INCOMING_FD).into());
        }
        a
    }

    /// The process that runs QEMU: as `spec.run_as` when given, with no
    /// way to gain privileges.
    fn command(&self, spec: &LaunchSpec) -> std::process::Command {
        let mut c = match spec.run_as {
            Some(_) => std::process::Command::new("setpriv"),
            None => std::process::Command::new("qemu-system-x86_64"),
        };
        if let Some((uid, gid)) = spec.run_as {
            // KVM needs /dev/kvm's group; nothing else needs any group.
            let groups = match (self.kvm(&spec.kernel), kvm_group()) {
                (true, Some(g)) => format!("--groups={g}"),
                _ => "--clear-groups".to_string(),
            };
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg(groups)
                .arg("--no-new-privs")
                .args(["--", "qemu-system-x86_64"]);
        }
        c.args(self.args(spec));
        c
    }

    /// Waits for QEMU to open its control socket; a QEMU that exits first
    /// failed, and its stderr says why. A thread then reaps it when it
    /// ends (after a daemon restart, init does).
    fn wait_started(
        &self,
        spec: &LaunchSpec,
        mut child: std::process::Child,
    ) -> Result<RuntimeHandle, VmmError> {
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        let failed = |why: String| {
            let stderr = std::fs::read_to_string(&spec.stderr_log).unwrap_or_default();
            match stderr.trim().lines().last() {
                Some(line) => VmmError::Launch(format!("qemu-system-x86_64: {line}")),
                None => VmmError::Launch(why),
            }
        };
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(failed(format!("QEMU exited at start ({status})")));
            }
            let connected = std::os::unix::net::UnixStream::connect(&spec.control_socket).is_ok();
            if let (true, Some(handle)) = (connected, process::handle_of(child.id())) {
                std::thread::spawn(move || child.wait());
                return Ok(handle);
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!(
                    "QEMU did not open its control socket within {}s",
                    START_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The group that owns /dev/kvm.
fn kvm_group() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/dev/kvm").ok().map(|m| m.gid())
}

/// The guest agent's socket, beside the control socket.
fn agent_socket(control_socket: &Path) -> PathBuf {
    control_socket.with_file_name("agent.sock")
}

/// The descriptor number QEMU finds the VM's tap at.
const TAP_FD: i32 = 3;

/// QEMU's seccomp sandbox, as tight as it goes.
const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// How long QEMU may take to come up (open its sockets, write its pid).
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn push_dev(a: &mut Vec<OsString>, spec: &str) {
    a.push("-device".into());
    a.push(spec.into());
}

/// QEMU option values separate on commas; a literal comma is doubled.
fn escape_commas(p: &Path) -> OsString {
    OsString::from(p.to_string_lossy().replace(',', ",,"))
}

impl Vmm for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn version(&self) -> String {
        let qemu = self.version.get_or_init(|| {
            cmd::run("qemu-system-x86_64", &["--version"])
                .ok()
                .and_then(|o| o.lines().next().map(str::to_string))
                .unwrap_or_default()
        });
        let accel = match self.kvm.get() {
            Some(true) => "kvm",
            Some(false) => "tcg",
            None => "unprobed",
        };
        format!("{qemu}; {accel}")
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            hotplug_drives: true,
            disk_formats: &[DiskFormat::Qcow2, DiskFormat::Raw],
            // The ELF kernel boots through its PVH entry point: no
            // real-mode setup and no decompression, which under emulation
            // is a visible part of a cold boot.
            kernels: &[KernelFormat::PvhVmlinux, KernelFormat::BzImage],
            needs_kvm: false,
            snapshots: true,
        }
    }

    fn unusable_reason(&self) -> Option<String> {
        cmd::which("qemu-system-x86_64").is_none().then(|| {
            "qemu-system-x86_64 is not installed; `banger doctor` says how to install it".into()
        })
    }

    fn probe_pending(&self) -> bool {
        self.kvm.get().is_none()
    }

    fn probe(&self, kernel: &Path) {
        self.kvm(kernel);
    }

    fn kernel_cmdline(&self, _name: &str) -> String {
        // The tag is added by `args`, so it is on every QEMU command line.
        // `cryptomgr.notests`: see `vmm::FAST_BOOT_ARGS`.
        format!(
            "console=ttyS0 root=/dev/vda rw panic=-1 net.ifnames=0 banger.config=/dev/vdb {}",
            super::FAST_BOOT_ARGS
        )
    }

    fn drive_plan(&self, drives: BootDrives) -> Vec<Drive> {
        // The workspace is hot-plugged on prepare, and attached at boot after.
        let mut plan = vec![drives.root, drives.config];
        plan.extend(drives.workspace);
        plan
    }

    fn stop_timeout(&self) -> Duration {
        STOP_TIMEOUT
    }

    fn is_alive(&self, handle: &RuntimeHandle, name: &str) -> bool {
        process::is_alive(handle, name)
    }

    fn responds(&self, control_socket: &Path) -> bool {
        qmp::execute(control_socket, "query-status", serde_json::Value::Null).is_ok()
    }

    fn signal(&self, handle: &RuntimeHandle, signal: i32) -> Result<(), VmmError> {
        process::signal(handle.pid, signal).map_err(|source| VmmError::Io {
            what: format!("signalling VMM pid {}", handle.pid),
            source,
        })
    }

    fn launch(&self, spec: &LaunchSpec) -> Result<RuntimeHandle, VmmError> {
        let _ = std::fs::remove_file(&spec.pid_file);
        let _ = std::fs::remove_file(&spec.control_socket);
        // Not -daemonize: QEMU's sandbox forbids the fork that needs. A
        // session of its own detaches it from the daemon instead; its
        // errors go to `stderr_log`.
        let stderr = std::fs::File::create(&spec.stderr_log).map_err(|source| VmmError::Io {
            what: format!("creating {}", spec.stderr_log.display()),
            source,
        })?;
        let _ = std::fs::remove_file(agent_socket(&spec.control_socket));
        let tap = match spec.template {
            true => None,
            false => Some(super::tap::open(&spec.tap).map_err(|source| VmmError::Io {
                what: format!("opening tap {}", spec.tap),
                source,
            })?),
        };
        let tap_fd = tap.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        let state = match &spec.restore_from {
            Some(p) => Some(std::fs::File::open(p).map_err(|source| VmmError::Io {
                what: format!("opening {}", p.display()),
                source,
            })?),
            None => None,
        };
        let state_fd = state.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        let mut command = self.command(spec);
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr);
        // SAFETY: setsid and dup2 are async-signal-safe; `tap_fd` stays open
        // in the parent until spawn returns. dup2 clears close-on-exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                libc::setsid();
                if let Some(fd) = tap_fd {
                    if libc::dup2(fd, TAP_FD) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(fd) = state_fd {
                    if libc::dup2(fd, qemu_snapshot::INCOMING_FD) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|source| VmmError::Io {
            what: "starting qemu-system-x86_64".into(),
            source,
        })?;
        self.wait_started(spec, child)
    }

    fn request_shutdown(&self, control_socket: &Path) -> Result<(), VmmError> {
        // Ctrl-Alt-Del: systemd starts ctrl-alt-del.target (a reboot), and
        // -no-reboot turns the reboot into QEMU's exit.
        let keys = json!({"keys": [
            {"type": "qcode", "data": "ctrl"},
            {"type": "qcode", "data": "alt"},
            {"type": "qcode", "data": "delete"}
        ]});
        qmp::execute(control_socket, "send-key", keys)?;
        Ok(())
    }

    fn attach_drive(&self, control_socket: &Path, id: &str, drive: &Drive) -> Result<(), VmmError> {
        let node = format!("node-{id}");
        qmp::execute(
            control_socket,
            "blockdev-add",
            json!({
                "node-name": node,
                "driver": drive.format.as_str(),
                "read-only": drive.readonly,
                "file": {"driver": "file", "filename": drive.path, "read-only": drive.readonly},
            }),
        )?;
        let added = qmp::execute(
            control_socket,
            "device_add",
            json!({
                "driver": "virtio-blk-pci",
                "id": format!("dev-{id}"),
                "drive": node,
                "serial": drive.serial,
                "bus": "hotplug0",
            }),
        );
        if let Err(e) = added {
            let _ = qmp::execute(control_socket, "blockdev-del", json!({"node-name": node}));
            return Err(e);
        }
        Ok(())
    }

    fn pause(&self, control_socket: &Path) -> Result<(), VmmError> {
        qmp::execute(control_socket, "stop", serde_json::Value::Null).map(drop)
    }

    fn resume(&self, control_socket: &Path) -> Result<(), VmmError> {
        qmp::execute(control_socket, "cont", serde_json::Value::Null).map(drop)
    }

    fn snapshot(&self, control_socket: &Path, dest: &Path) -> Result<(), VmmError> {
        std::fs::create_dir_all(dest).map_err(|source| VmmError::Io {
            what: format!("creating {}", dest.display()),
            source,
        })?;
        qemu_snapshot::save(control_socket, &qemu_snapshot::state_file(dest))
    }

    fn restore(&self, spec: &LaunchSpec, from: &Path) -> Result<RuntimeHandle, VmmError> {
        let mut spec = spec.clone();
        spec.restore_from = Some(qemu_snapshot::state_file(from));
        let handle = self.launch(&spec)?;
        if let Err(e) = qemu_snapshot::wait_restored(&spec.control_socket) {
            let _ = process::signal(handle.pid, libc::SIGKILL);
            return Err(e);
        }
        Ok(handle)
    }

    fn agent_exec(
        &self,
        control_socket: &Path,
        run: &qga::AgentRun,
        timeout: Duration,
    ) -> Result<qga::AgentOutput, VmmError> {
        qga::exec(&agent_socket(control_socket), run, timeout)
    }

    fn detach_drive(&self, control_socket: &Path, id: &str) -> Result<(), VmmError> {
        let _ = qmp::execute(
            control_socket,
            "device_del",
            json!({"id": format!("dev-{id}")}),
        );
        // The guest releases the device asynchronously; the node can go once
        // it has.
        let node = json!({"node-name": format!("node-{id}")});
        let mut last = None;
        for _ in 0..100 {
            match qmp::execute(control_socket, "blockdev-del", node.clone()) {
                Ok(_) => return Ok(()),
                Err(VmmError::NotFound(_)) => return Ok(()),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(last.unwrap_or_else(|| VmmError::Control("drive did not detach".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_has_the_devices_the_guest_expects() {
        let spec = LaunchSpec {
            name: "dev".into(),
            kernel: "/img/vmlinuz".into(),
            initrd: "/img/initrd".into(),
            cmdline: "console=ttyS0 root=/dev/vda".into(),
            drives: vec![
                Drive {
                    path: "/s/a,b.qcow2".into(),
                    format: DiskFormat::Qcow2,
                    readonly: false,
                    serial: "banger-root".into(),
                },
                Drive {
                    path: "/s/config.img".into(),
                    format: DiskFormat::Raw,
                    readonly: true,
                    serial: "banger-config".into(),
                },
            ],
            tap: "banger-tap1".into(),
            mac: "02:62:67:00:00:01".into(),
            cpus: 2,
            memory_mib: 512,
            console_log: "/s/console.log".into(),
            pid_file: "/r/vmm.pid".into(),
            control_socket: "/r/control.sock".into(),
            run_as: Some((2_000_000_001, 2_000_000_001)),
            stderr_log: "/r/vmm.stderr".into(),
            template: false,
            restore_from: None,
        };
        let qemu = Qemu::new(AccelChoice::Tcg, "/nonexistent/verdict".into());
        assert!(!qemu.probe_pending(), "--accel tcg needs no probe");
        let args: Vec<String> = qemu
            .args(&spec)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let line = args.join(" ");
        assert!(line.contains("-accel tcg"));
        assert!(line.contains("file=/s/a,,b.qcow2,if=none,id=drive0,format=qcow2,readonly=off"));
        assert!(line.contains("id=drive1,format=raw,readonly=on"));
        assert!(line.contains("drive=drive1,serial=banger-config"));
        assert!(line.contains("pcie-root-port,id=hotplug0"));
        assert!(line.contains(&format!("tap,id=net0,fd={TAP_FD}")));
        assert!(line.contains("mac=02:62:67:00:00:01"));
        assert!(args.iter().any(|a| a.ends_with(" banger-vm=dev")));
        assert!(line.contains("-no-reboot"));
        assert!(line.contains(&format!("-sandbox {SANDBOX}")));
        assert!(!line.contains("-daemonize"), "the sandbox forbids the fork");
        let cmd = qemu.command(&spec);
        let argv: Vec<String> = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            argv[..3],
            ["setpriv", "--reuid=2000000001", "--regid=2000000001"]
        );
        assert!(argv.contains(&"--no-new-privs".to_string()));
    }
}
