//! Booting a VM (first boot, start, restart): network, disk, accelerator,
//! the backend's launch, then SSH. A boot that fails leaves no process and
//! no tap, and the VM in `error` with the reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_api::VmState;

use super::error::{Context, VmError};
use super::record::VmRecord;
use super::service::{blocking, VmService, R};
use crate::guest::configdrive::Identity;
use crate::guest::console::ConsoleWatch;
use crate::hostnat;
use crate::layout::ensure_dir;
use crate::opstate::Op;
use crate::pathio::FromPathIo;
use crate::vmm::{BootDrives, DiskFormat, Drive, LaunchSpec};

/// The config drive's serial, as the guest looks for it.
pub(super) const CONFIG_SERIAL: &str = "banger-config";
pub(super) const ROOT_SERIAL: &str = "banger-root";

/// What a VM restored from a template starts from.
pub(super) struct Restore {
    /// The template's saved state (`Template::state`).
    pub state: std::path::PathBuf,
    /// The VM's own identity, which it takes once running.
    pub identity: Identity,
}

/// How long one readiness probe (`ssh true`) may take.
const READY_PROBE_DEADLINE: Duration = Duration::from_secs(15);
/// How often a boot that waits for sshd's console line looks for it.
const CONSOLE_LOOK: Duration = Duration::from_millis(20);
/// How often SSH is tried anyway while that line has not appeared.
const UNANNOUNCED_PROBE: Duration = Duration::from_secs(2);

impl VmService {
    /// Boots `vm` and waits for SSH; returns it running.
    pub(super) async fn boot(self: &Arc<Self>, op: &Op, vm: VmRecord, pct: u8) -> R<VmRecord> {
        self.boot_from(op, vm, pct, None).await
    }

    /// Boots `vm`, or restores it from a template (`restore`) and gives it
    /// its identity; then waits for SSH.
    pub(super) async fn boot_from(
        self: &Arc<Self>,
        op: &Op,
        mut vm: VmRecord,
        pct: u8,
        restore: Option<Restore>,
    ) -> R<VmRecord> {
        match self.boot_inner(op, &mut vm, pct, restore).await {
            Ok(()) => Ok(vm),
            Err(e) => {
                self.abort_boot(&mut vm, &e).await;
                Err(e)
            }
        }
    }

    async fn abort_boot(&self, vm: &mut VmRecord, e: &VmError) {
        if self.is_alive(vm) {
            if let Err(k) = self.force_kill(vm).await {
                tracing::warn!(vm = %vm.name, "after a failed boot: {k}");
            }
        }
        if let Err(t) = self.teardown_runtime(vm).await {
            tracing::warn!(vm = %vm.name, "after a failed boot: {t}");
        }
        if let Err(t) = self.transition(vm, VmState::Error, None, Some(&e.to_string())) {
            tracing::warn!(vm = %vm.name, "after a failed boot: {t}");
        }
    }

    async fn boot_inner(
        self: &Arc<Self>,
        op: &Op,
        vm: &mut VmRecord,
        pct: u8,
        restore: Option<Restore>,
    ) -> R<()> {
        let l = self.layout().clone();
        let image = vm.image_files(&l);
        if !image.exists() {
            return Err(VmError::ImageMissing(format!(
                "image {:?} of VM {:?} is gone; rebuild it with `banger image build {}`",
                vm.image, vm.name, vm.image
            )));
        }
        let backend = self.backend_of(vm)?;
        let kernel = image.kernel_for(backend.capabilities().kernels);
        if !kernel.exists() {
            return Err(VmError::ImageMissing(format!(
                "image {:?} version {} has no {} for the {} backend (built before it was supported); rebuild it with `banger image build {}`",
                vm.image,
                vm.image_version,
                kernel.file_name().unwrap_or_default().to_string_lossy(),
                backend.name(),
                vm.image
            )));
        }
        op.phase(
            "network",
            &format!("tap {} on bridge {}", vm.tap, self.cfg.bridge),
            pct,
        );
        self.plug_network(vm).await?;
        let run_dir = l.vm_run_dir(&vm.name);
        ensure_dir(&run_dir, 0o700).map_err(|e| VmError::Host(FromPathIo::io(&run_dir, e)))?;
        let root = self.activate_disk(vm).await?;
        if backend.probe_pending() {
            op.phase(
                "accel",
                "checking once whether KVM can boot a guest on this host (up to 8 s; the verdict is kept)",
                pct + 5,
            );
            let (b, kernel) = (backend.clone(), kernel.clone());
            blocking(move || b.probe(&kernel)).await;
        }
        let run_as = self.vmm_identity(vm);
        let drives = backend.drive_plan(BootDrives {
            root,
            config: Drive {
                path: l.vm_config_drive(&vm.name),
                format: DiskFormat::Raw,
                readonly: true,
                serial: CONFIG_SERIAL.into(),
            },
            workspace: self.workspace_drive(vm),
        });
        let spec = LaunchSpec {
            name: vm.name.clone(),
            kernel,
            initrd: image.initrd(),
            cmdline: backend.kernel_cmdline(&vm.name),
            drives,
            tap: vm.tap.clone(),
            mac: vm.mac.clone(),
            cpus: vm.cpus,
            memory_mib: vm.memory_mib,
            console_log: l.vm_console_log(&vm.name),
            pid_file: l.vm_pid_file(&vm.name),
            control_socket: l.vm_control_socket(&vm.name),
            run_as,
            stderr_log: l.vm_stderr_log(&vm.name),
            template: false,
            restore_from: None,
        };
        if let Some(r) = &restore {
            self.seed_console(vm, &r.state)?;
        }
        if let Some((uid, gid)) = run_as {
            self.hand_over_to_vmm(&spec, uid, gid).await?;
        }
        // A cold boot of an image whose sshd says when it listens waits
        // for that on the console (what is written from now on).
        let announced = restore.is_none()
            && crate::image::Manifest::read(&image).is_some_and(|m| m.announces_sshd);
        let watch = announced.then(|| ConsoleWatch::from_end(&spec.console_log));
        let b = backend.clone();
        let started = Instant::now();
        let (handle, identity) = match restore {
            None => {
                let how = format!("starting {} ({})", vm.name, backend.name());
                op.phase("boot", &how, pct + 10);
                let launched = blocking(move || b.launch(&spec)).await;
                (launched.map_err(VmError::from), None)
            }
            Some(Restore { state, identity }) => {
                let how = format!("restoring {} from its template", vm.name);
                op.phase("restore", &how, pct + 10);
                let restored = blocking(move || b.restore(&spec, &state)).await;
                (
                    self.blame_template(vm, restored.map_err(VmError::from)),
                    Some(identity),
                )
            }
        };
        let handle = handle.context(|| format!("booting {}", vm.name))?;
        self.transition(vm, VmState::Running, Some(handle), None)?;
        let mut steps = Vec::new();
        if let Some(identity) = identity {
            steps.push(format!("restore {:.1}s", started.elapsed().as_secs_f64()));
            op.phase(
                "identity",
                &format!("giving {} its identity", vm.name),
                pct + 15,
            );
            let t = Instant::now();
            let taken = self.reidentify(vm, backend.clone(), &identity).await;
            self.blame_template(vm, taken)?;
            steps.push(format!("identity {:.1}s", t.elapsed().as_secs_f64()));
        }
        op.phase("ssh", &format!("waiting for SSH on {}", vm.ip), pct + 20);
        let took = self.wait_ready(vm, watch).await?;
        steps.push(format!("SSH {:.1}s", took.as_secs_f64()));
        if vm.workspace.is_some() {
            op.phase("workspace", "mounting the workspace", pct + 25);
            self.remount_workspace(vm).await?;
        }
        op.phase(
            "ready",
            &format!(
                "{} answers SSH ({:.1}s: {})",
                vm.name,
                started.elapsed().as_secs_f64(),
                steps.join(", ")
            ),
            100,
        );
        Ok(())
    }

    /// Bridge, isolation or NAT rules, tap.
    async fn plug_network(&self, vm: &VmRecord) -> R<()> {
        let (net, nat) = (self.host.net.clone(), self.host.nat.clone());
        let (bridge, subnet) = (self.cfg.bridge.clone(), self.cfg.subnet);
        blocking(move || net.ensure_bridge(&bridge, &subnet))
            .await
            .context(|| format!("setting up bridge {}", self.cfg.bridge))?;
        self.ensure_isolation(true).await?;
        if vm.nat {
            let (name, ip, bridge) = (vm.name.clone(), vm.ip.clone(), self.cfg.bridge.clone());
            blocking(move || hostnat::install(nat.as_ref(), &name, &ip, &bridge))
                .await
                .context(|| format!("installing the NAT rules of {}", vm.name))?;
        }
        let net = self.host.net.clone();
        let (tap, bridge) = (vm.tap.clone(), self.cfg.bridge.clone());
        let owner = self.vmm_identity(vm).map(|(uid, _)| uid);
        blocking(move || net.ensure_tap(&tap, &bridge, owner))
            .await
            .context(|| format!("creating tap {}", vm.tap))
    }

    /// The unprivileged uid and gid `vm`'s VMM runs as: one per VM, from
    /// `--vmm-uid-base` and the VM's slot (none when that is 0).
    pub(crate) fn vmm_identity(&self, vm: &VmRecord) -> Option<(u32, u32)> {
        let base = self.cfg.vmm_uid_base;
        (base != 0).then(|| (base + vm.slot, base + vm.slot))
    }

    /// Gives the VMM's uid what it opens itself: its run directory (QMP
    /// socket, pid file), the root disk, the config drive, the console log
    /// and any workspace drive. The image it boots stays root's, readable.
    async fn hand_over_to_vmm(&self, spec: &LaunchSpec, uid: u32, gid: u32) -> R<()> {
        let console = spec.console_log.clone();
        if !console.exists() {
            std::fs::write(&console, b"")
                .map_err(|e| VmError::Host(FromPathIo::io(&console, e)))?;
        }
        let run_dir = spec
            .control_socket
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let mut paths = vec![run_dir, console];
        paths.extend(spec.drives.iter().map(|d| d.path.clone()));
        let provision = self.host.provision.clone();
        blocking(move || provision.hand_over(&paths, uid, gid))
            .await
            .context(|| format!("handing the VM's files to uid {uid}"))
    }

    /// The root disk, made usable; what the VMM opens.
    async fn activate_disk(&self, vm: &VmRecord) -> R<Drive> {
        let disk = self.host.disk(vm.disk).ok_or_else(|| {
            VmError::HostMissing(format!(
                "VM {:?} has a {} disk, which this daemon cannot set up",
                vm.name,
                vm.disk.as_str()
            ))
        })?;
        let base = vm.disk_base(self.layout());
        let dest = self.layout().vm_disk(&vm.name, vm.disk);
        let format = disk.format();
        let path = blocking(move || disk.activate(&base, &dest))
            .await
            .context(|| format!("activating the root disk of {}", vm.name))?;
        Ok(Drive {
            path,
            format,
            readonly: false,
            serial: ROOT_SERIAL.into(),
        })
    }

    /// Polls until SSH answers (a `true` that exits 0), or the boot timeout
    /// passes; a VMM that died ends the wait early. With a `watch` of the
    /// console, SSH is tried once sshd says it listens (and every
    /// [`UNANNOUNCED_PROBE`] in case the line is lost): a probe sent while
    /// the guest's address or sshd is not up yet waits on ARP and SYN
    /// retries (a second each), and costs the booting guest CPU.
    async fn wait_ready(&self, vm: &VmRecord, mut watch: Option<ConsoleWatch>) -> R<Duration> {
        let start = Instant::now();
        let mut last = String::new();
        let mut last_probe = start;
        let timeout = self.cfg.boot_timeout;
        while start.elapsed() < timeout {
            if !self.is_alive(vm) {
                return Err(VmError::Failed(format!(
                    "{} stopped while booting; `banger vm logs {}` shows its console",
                    vm.name, vm.name
                )));
            }
            if let Some(w) = watch.as_mut() {
                if !w.sshd_listens() && last_probe.elapsed() < UNANNOUNCED_PROBE {
                    tokio::time::sleep(CONSOLE_LOOK).await;
                    continue;
                }
            }
            last_probe = Instant::now();
            match self
                .guest_exec(vm, "true", None, READY_PROBE_DEADLINE)
                .await
            {
                Ok(out) if out.status.success() => return Ok(start.elapsed()),
                Ok(out) => last = String::from_utf8_lossy(&out.stderr).trim().to_string(),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(VmError::Failed(format!(
            "SSH on {} did not answer within {}s (last: {last}); `banger vm logs {}` shows the console",
            vm.name,
            timeout.as_secs(),
            vm.name
        )))
    }
}
