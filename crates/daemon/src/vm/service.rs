//! The VM service: carries out each verb as an operation, keeping the store,
//! the host resources (tap, disk, VMM process, known_hosts) and the guest in
//! step. Nothing here is backend-specific.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use banger_api::{ApiError, ErrorCode, VmInfo, VmSpec, VmState};

use super::lifecycle;
use crate::disk::CowDisk;
use crate::guest::{configdrive, ssh};
use crate::hostnat::{self, SystemIptables};
use crate::hostnet::{bridge, tap, Subnet, SubnetPlan};
use crate::image::{self, DEFAULT_IMAGE};
use crate::layout::{ensure_dir, Layout};
use crate::opstate::{Op, OpTracker, Sink};
use crate::store::{now, Store};
use crate::vmm::accel::{self, kvm_boots_guest, AccelChoice};
use crate::vmm::qemu::{Qemu, STOP_TIMEOUT};
use crate::vmm::{process, Drive, LaunchSpec, Vmm};

/// `--vmm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmChoice {
    Auto,
    Qemu,
    Firecracker,
}

impl std::str::FromStr for VmmChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(VmmChoice::Auto),
            "qemu" => Ok(VmmChoice::Qemu),
            "firecracker" => Ok(VmmChoice::Firecracker),
            _ => Err(format!("unknown VMM {s:?}; use auto, qemu or firecracker")),
        }
    }
}

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
}

/// Resource limits `vm create` accepts.
const MAX_CPUS: u32 = 64;
const MIN_MEMORY_MIB: u32 = 256;
const MAX_DISK_GIB: u32 = 2048;

pub struct VmService {
    pub cfg: Config,
    pub store: Arc<Store>,
    pub ops: Arc<OpTracker>,
    disk: Box<dyn CowDisk>,
    kvm: OnceLock<bool>,
    /// One image build at a time.
    image_lock: tokio::sync::Mutex<()>,
    /// Whether the `.vm` DNS server runs (endpoints then use names).
    pub dns_running: std::sync::atomic::AtomicBool,
}

type R<T> = Result<T, ApiError>;

fn blocking_err(e: tokio::task::JoinError) -> ApiError {
    ApiError::internal(format!("background task failed: {e}"))
}

impl VmService {
    pub fn new(cfg: Config, store: Arc<Store>) -> Arc<Self> {
        let ops = OpTracker::new(store.clone());
        Arc::new(Self {
            cfg,
            store,
            ops,
            disk: Box::new(crate::disk::qcow2::Qcow2),
            kvm: OnceLock::new(),
            image_lock: tokio::sync::Mutex::new(()),
            dns_running: std::sync::atomic::AtomicBool::new(false),
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

    /// The backend a new VM gets.
    fn vmm_for_new_vm(&self) -> R<&'static str> {
        match self.cfg.vmm {
            VmmChoice::Qemu | VmmChoice::Auto => Ok("qemu"),
            VmmChoice::Firecracker => Err(ApiError::new(
                ErrorCode::HostMissing,
                "the Firecracker backend is not part of this build yet; run the daemon with --vmm qemu",
            )),
        }
    }

    /// The backend for an existing VM, by its stored name.
    fn backend(&self, vm: &VmInfo, kernel: &std::path::Path) -> R<Box<dyn Vmm>> {
        match vm.vmm.as_str() {
            "qemu" => Ok(Box::new(Qemu {
                kvm: self.use_kvm(kernel),
            })),
            other => Err(ApiError::new(
                ErrorCode::HostMissing,
                format!(
                    "VM {:?} uses the {other} backend, which this daemon cannot drive",
                    vm.name
                ),
            )),
        }
    }

    /// Decides KVM or TCG ahead of the first boot (the probe takes seconds
    /// when KVM cannot run guests), using any built image's kernel.
    pub fn probe_accel_early(&self) {
        if self.kvm.get().is_some() {
            return;
        }
        if let Ok(images) = image::catalog::list(self.layout()) {
            if let Some(img) = images.first() {
                self.use_kvm(&self.layout().image(&img.name).kernel());
            }
        }
    }

    /// The backend that drives an existing VM.
    pub fn backend_of(&self, vm: &VmInfo) -> R<Box<dyn Vmm>> {
        self.backend(vm, &self.layout().image(&vm.image).kernel())
    }

    /// True when the next boot must first run the KVM probe.
    fn accel_probe_pending(&self) -> bool {
        self.kvm.get().is_none()
            && matches!(self.cfg.accel, AccelChoice::Auto)
            && accel::cached_verdict(&self.layout().state_dir.join("accel-probe")).is_none()
    }

    fn use_kvm(&self, kernel: &std::path::Path) -> bool {
        *self.kvm.get_or_init(|| match self.cfg.accel {
            AccelChoice::Tcg => false,
            AccelChoice::Kvm => true,
            AccelChoice::Auto => {
                let cache = self.layout().state_dir.join("accel-probe");
                if let Some(known) = accel::cached_verdict(&cache) {
                    return known;
                }
                let ok = kvm_boots_guest(kernel, Duration::from_secs(8));
                accel::save_verdict(&cache, ok);
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
            }
        })
    }

    pub fn get(&self, name: &str) -> R<VmInfo> {
        self.store
            .get_vm(name)?
            .ok_or_else(|| ApiError::not_found_vm(name))
    }

    // ---- create -------------------------------------------------------

    pub async fn create(self: &Arc<Self>, spec: VmSpec, sink: Option<Sink>) -> R<VmInfo> {
        banger_api::validate_vm_name(&spec.name)?;
        banger_api::validate_image_name(&spec.image)?;
        check_resources(&spec)?;
        let vmm = self.vmm_for_new_vm()?;
        if self.store.get_vm(&spec.name)?.is_some() {
            return Err(duplicate(&spec.name));
        }
        let op = self.ops.begin("vm_create", &[&spec.name], sink)?;
        let result = self.create_inner(&op, spec, vmm).await;
        op.finish(&result);
        result
    }

    async fn create_inner(self: &Arc<Self>, op: &Op, spec: VmSpec, vmm: &str) -> R<VmInfo> {
        self.ensure_image(op, &spec.image).await?;
        let image = self.layout().image(&spec.image);
        let rootfs_bytes = std::fs::metadata(image.rootfs())
            .map(|m| m.len())
            .unwrap_or(0);
        let min_gib = rootfs_bytes.div_ceil(1 << 30) as u32;
        if spec.disk_gib < min_gib {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!("--disk {} GiB is smaller than the image ({min_gib} GiB); use --disk {min_gib} or more", spec.disk_gib),
            ));
        }
        let draft = VmInfo {
            name: spec.name.clone(),
            state: VmState::Creating,
            ip: String::new(),
            mac: String::new(),
            tap: String::new(),
            slot: 0,
            vmm: vmm.to_string(),
            cpus: spec.cpus,
            memory_mib: spec.memory_mib,
            disk_gib: spec.disk_gib,
            image: spec.image.clone(),
            nat: spec.nat,
            created_at: now(),
            pid: None,
            last_error: None,
            workspace: None,
        };
        let vm = self.store.insert_vm(&draft, &self.plan())?;
        op.phase(
            "provision",
            &format!("disk, keys and config drive for {} ({})", vm.name, vm.ip),
            40,
        );
        if let Err(e) = self.provision(&vm).await {
            self.fail(&vm, &e);
            return Err(e);
        }
        self.boot(op, &vm, 50).await?;
        self.get(&vm.name)
    }

    /// Builds the default image on first use; other images must exist.
    async fn ensure_image(self: &Arc<Self>, op: &Op, name: &str) -> R<()> {
        if self.layout().image(name).exists() {
            return Ok(());
        }
        if name != DEFAULT_IMAGE {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no image named {name:?}; build it with `banger image build {name}`"),
            ));
        }
        // Another create may be building it: wait for the build lock, then
        // look again.
        let _guard = self.image_lock.lock().await;
        if self.layout().image(name).exists() {
            return Ok(());
        }
        op.phase(
            "image",
            "building the default image (first use; takes a few minutes)",
            1,
        );
        self.build_image_locked(op, name).await
    }

    /// Builds image `name` (serialised with other builds).
    pub async fn build_image(self: &Arc<Self>, op: &Op, name: &str) -> R<()> {
        let _guard = self.image_lock.lock().await;
        self.build_image_locked(op, name).await
    }

    /// Builds image `name`; the caller holds `image_lock`.
    async fn build_image_locked(self: &Arc<Self>, op: &Op, name: &str) -> R<()> {
        let paths = self.layout().image(name);
        let report = op.reporter();
        let name = name.to_string();
        let netns = self.cfg.build_netns.clone();
        tokio::task::spawn_blocking(move || {
            image::build::build(&name, &paths, netns.as_deref(), &report)
        })
        .await
        .map_err(blocking_err)??;
        // Settle KVM-or-TCG now rather than during the first boot.
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.probe_accel_early());
        Ok(())
    }

    /// Per-VM files: host key (pinned), config drive, root disk.
    async fn provision(self: &Arc<Self>, vm: &VmInfo) -> R<()> {
        let this = self.clone();
        let vm = vm.clone();
        tokio::task::spawn_blocking(move || this.provision_blocking(&vm))
            .await
            .map_err(blocking_err)?
    }

    fn provision_blocking(&self, vm: &VmInfo) -> R<()> {
        let l = self.layout();
        let dir = l.vm_dir(&vm.name);
        ensure_dir(&dir, 0o700)
            .map_err(|e| ApiError::internal(format!("{}: {e}", dir.display())))?;
        let host_key = l.vm_host_key(&vm.name);
        ssh::generate_key(&host_key, &format!("{}.vm", vm.name))?;
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p)
                .map_err(|e| ApiError::internal(format!("{}: {e}", p.display())))
        };
        let host_pub = read(ssh::pub_path(&host_key))?;
        let identity = configdrive::Identity {
            hostname: vm.name.clone(),
            ip: vm.ip.clone(),
            prefix: self.cfg.subnet.prefix,
            gateway: self.cfg.subnet.gateway().to_string(),
            dns: self.cfg.subnet.gateway().to_string(),
            authorized_key: ssh::public_key(&l.client_key())?,
            host_key_private: read(host_key.clone())?,
            host_key_public: host_pub.clone(),
        };
        configdrive::build(&identity, &l.vm_config_drive(&vm.name))?;
        let disk = l.vm_disk(&vm.name);
        if !disk.exists() {
            self.disk
                .create(&l.image(&vm.image).rootfs(), &disk, vm.disk_gib)?;
        }
        ssh::pin_host_key(l, &vm.name, &vm.ip, &host_pub)?;
        Ok(())
    }

    /// Starts the VMM and waits for SSH. On failure the VM ends in `error`
    /// with nothing left running.
    async fn boot(self: &Arc<Self>, op: &Op, vm: &VmInfo, pct: u8) -> R<()> {
        match self.boot_inner(op, vm, pct).await {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Ok(Some(cur)) = self.store.get_vm(&vm.name) {
                    if let Some(pid) = cur.pid {
                        let _ = process::signal(pid, libc::SIGKILL);
                        process::wait_exit(pid, &vm.name, Duration::from_secs(10)).await;
                    }
                }
                self.fail(vm, &e);
                Err(e)
            }
        }
    }

    async fn boot_inner(self: &Arc<Self>, op: &Op, vm: &VmInfo, pct: u8) -> R<()> {
        let l = self.layout().clone();
        let image = l.image(&vm.image);
        if !image.exists() {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!(
                    "image {:?} of VM {:?} is gone; rebuild it with `banger image build {}`",
                    vm.image, vm.name, vm.image
                ),
            ));
        }
        op.phase(
            "network",
            &format!("tap {} on bridge {}", vm.tap, self.cfg.bridge),
            pct,
        );
        bridge::ensure(&self.cfg.bridge, &self.cfg.subnet)?;
        self.ensure_isolation(vm.nat)?;
        if vm.nat {
            hostnat::install(&SystemIptables, &vm.name, &vm.ip, &self.cfg.bridge)?;
        }
        tap::ensure(&vm.tap, &self.cfg.bridge)?;
        let run_dir = l.vm_run_dir(&vm.name);
        ensure_dir(&run_dir, 0o700)
            .map_err(|e| ApiError::internal(format!("{}: {e}", run_dir.display())))?;
        let spec = LaunchSpec {
            name: vm.name.clone(),
            kernel: image.kernel(),
            initrd: image.initrd(),
            cmdline: "console=ttyS0 root=/dev/vda rw panic=-1 net.ifnames=0 banger.config=/dev/vdb"
                .into(),
            drives: vec![
                Drive {
                    path: l.vm_disk(&vm.name),
                    format: self.disk.format().into(),
                    readonly: false,
                    serial: "banger-root".into(),
                },
                Drive {
                    path: l.vm_config_drive(&vm.name),
                    format: "raw".into(),
                    readonly: true,
                    serial: "banger-config".into(),
                },
            ]
            .into_iter()
            .chain(self.workspace_drive(vm))
            .collect(),
            tap: vm.tap.clone(),
            mac: vm.mac.clone(),
            cpus: vm.cpus,
            memory_mib: vm.memory_mib,
            console_log: l.vm_console_log(&vm.name),
            pid_file: l.vm_pid_file(&vm.name),
            control_socket: l.vm_control_socket(&vm.name),
        };
        if self.accel_probe_pending() {
            op.phase(
                "accel",
                "checking once whether KVM can boot a guest on this host (up to 8 s; the verdict is kept)",
                pct + 5,
            );
            let this = self.clone();
            let kernel = spec.kernel.clone();
            tokio::task::spawn_blocking(move || this.use_kvm(&kernel))
                .await
                .map_err(blocking_err)?;
        }
        let backend = self.backend(vm, &spec.kernel)?;
        op.phase(
            "boot",
            &format!("starting {} ({})", vm.name, backend.name()),
            pct + 10,
        );
        let pid = tokio::task::spawn_blocking(move || backend.launch(&spec))
            .await
            .map_err(blocking_err)??;
        self.store
            .set_state(&vm.name, VmState::Running, Some(pid), None)?;
        op.phase("ssh", &format!("waiting for SSH on {}", vm.ip), pct + 20);
        let name = vm.name.clone();
        let took = ssh::wait_ready(&l, &vm.ip, self.cfg.boot_timeout, move || {
            process::is_vm_process(pid, &name)
        })
        .await?;
        if vm.workspace.is_some() {
            op.phase("workspace", "mounting the workspace", pct + 25);
            self.remount_workspace(vm).await?;
        }
        op.phase(
            "ready",
            &format!("{} answers SSH ({:.1}s)", vm.name, took.as_secs_f64()),
            100,
        );
        Ok(())
    }

    /// Keeps guests on the bridge unless their VM has NAT. Without iptables
    /// that is only a warning for guests that need no NAT (nothing forwards
    /// their packets unless the host enabled forwarding).
    pub fn ensure_isolation(&self, strict: bool) -> R<()> {
        match hostnat::ensure_isolation(&SystemIptables, &self.cfg.bridge) {
            Ok(()) => Ok(()),
            Err(e) if strict => Err(e.into()),
            Err(e) => {
                tracing::warn!("cannot install the bridge isolation rule: {e}");
                Ok(())
            }
        }
    }

    fn fail(&self, vm: &VmInfo, e: &ApiError) {
        self.teardown_runtime(vm);
        let _ = self
            .store
            .set_state(&vm.name, VmState::Error, None, Some(&e.message));
    }

    /// Removes what only a running VM has: pid file, control socket, run
    /// directory, tap. Idempotent.
    pub fn teardown_runtime(&self, vm: &VmInfo) {
        let l = self.layout();
        let run_dir = l.vm_run_dir(&vm.name);
        if let Err(e) = std::fs::remove_dir_all(&run_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(vm = %vm.name, "removing {}: {e}", run_dir.display());
            }
        }
        if let Err(e) = tap::remove(&vm.tap) {
            tracing::warn!(vm = %vm.name, "removing tap {}: {e}", vm.tap);
        }
    }

    // ---- start / stop / restart / kill --------------------------------

    pub async fn start(self: &Arc<Self>, name: &str, sink: Option<Sink>) -> R<VmInfo> {
        banger_api::validate_vm_name(name)?;
        let vm = self.get(name)?;
        lifecycle::can_start(name, vm.state)?;
        let op = self.ops.begin("vm_start", &[name], sink)?;
        let result = async {
            let vm = self.get(name)?;
            lifecycle::can_start(name, vm.state)?;
            self.boot(&op, &vm, 10).await?;
            self.get(name)
        }
        .await;
        op.finish(&result);
        result
    }

    pub async fn stop(self: &Arc<Self>, name: &str, sink: Option<Sink>) -> R<VmInfo> {
        banger_api::validate_vm_name(name)?;
        let vm = self.get(name)?;
        lifecycle::can_stop(name, vm.state)?;
        let op = self.ops.begin("vm_stop", &[name], sink)?;
        let result = async {
            self.stop_inner(&op, &self.get(name)?).await?;
            self.get(name)
        }
        .await;
        op.finish(&result);
        result
    }

    /// Graceful stop: Ctrl-Alt-Del, wait, then SIGKILL. Ends `stopped`.
    async fn stop_inner(&self, op: &Op, vm: &VmInfo) -> R<()> {
        self.store
            .set_state(&vm.name, VmState::Stopping, vm.pid, None)?;
        if let Some(pid) = vm.pid.filter(|p| process::is_vm_process(*p, &vm.name)) {
            op.phase("shutdown", "sending Ctrl-Alt-Del", 20);
            let image = self.layout().image(&vm.image);
            let asked = self
                .backend(vm, &image.kernel())
                .and_then(|b| Ok(b.request_shutdown(&self.layout().vm_control_socket(&vm.name))?));
            let graceful = match asked {
                Ok(()) => process::wait_exit(pid, &vm.name, STOP_TIMEOUT).await,
                Err(e) => {
                    tracing::warn!(vm = %vm.name, "graceful shutdown request failed: {}", e.message);
                    false
                }
            };
            if !graceful {
                op.phase(
                    "kill",
                    "the guest did not shut down in time; killing the VMM",
                    70,
                );
                self.force_kill(pid, vm).await?;
            }
        }
        self.teardown_runtime(vm);
        self.store
            .set_state(&vm.name, VmState::Stopped, None, None)?;
        op.phase("stopped", &format!("{} stopped", vm.name), 100);
        Ok(())
    }

    async fn force_kill(&self, pid: u32, vm: &VmInfo) -> R<()> {
        process::signal(pid, libc::SIGKILL)
            .map_err(|e| ApiError::internal(format!("killing pid {pid}: {e}")))?;
        if !process::wait_exit(pid, &vm.name, Duration::from_secs(30)).await {
            return Err(ApiError::internal(format!(
                "VMM pid {pid} of {:?} survived SIGKILL",
                vm.name
            )));
        }
        Ok(())
    }

    pub async fn restart(self: &Arc<Self>, name: &str, sink: Option<Sink>) -> R<VmInfo> {
        banger_api::validate_vm_name(name)?;
        let vm = self.get(name)?;
        lifecycle::can_restart(name, vm.state)?;
        let op = self.ops.begin("vm_restart", &[name], sink)?;
        let result = async {
            self.stop_inner(&op, &self.get(name)?).await?;
            self.boot(&op, &self.get(name)?, 50).await?;
            self.get(name)
        }
        .await;
        op.finish(&result);
        result
    }

    pub async fn kill(self: &Arc<Self>, name: &str, signal: &str, sink: Option<Sink>) -> R<VmInfo> {
        banger_api::validate_vm_name(name)?;
        let signo = process::parse_signal(signal).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidArgument,
                format!("unknown signal {signal:?}; use KILL, TERM, INT, HUP or QUIT"),
            )
        })?;
        let vm = self.get(name)?;
        lifecycle::can_kill(name, vm.state)?;
        let op = self.ops.begin("vm_kill", &[name], sink)?;
        let result = async {
            let vm = self.get(name)?;
            if let Some(pid) = vm.pid.filter(|p| process::is_vm_process(*p, name)) {
                op.phase(
                    "signal",
                    &format!(
                        "sending SIG{} to pid {pid}",
                        signal.trim_start_matches("SIG").to_uppercase()
                    ),
                    30,
                );
                process::signal(pid, signo)
                    .map_err(|e| ApiError::internal(format!("signalling pid {pid}: {e}")))?;
                if !process::wait_exit(pid, name, Duration::from_secs(20)).await {
                    op.phase(
                        "kill",
                        "still running after the signal; sending SIGKILL",
                        60,
                    );
                    self.force_kill(pid, &vm).await?;
                }
            }
            self.teardown_runtime(&vm);
            self.store.set_state(name, VmState::Stopped, None, None)?;
            self.get(name)
        }
        .await;
        op.finish(&result);
        result
    }

    // ---- delete / prune -----------------------------------------------

    pub async fn delete(self: &Arc<Self>, name: &str, force: bool, sink: Option<Sink>) -> R<()> {
        banger_api::validate_vm_name(name)?;
        let vm = self.get(name)?;
        lifecycle::can_delete(name, vm.state, force)?;
        let op = self.ops.begin("vm_delete", &[name], sink)?;
        let result = async {
            let vm = self.get(name)?;
            lifecycle::can_delete(name, vm.state, force)?;
            self.delete_inner(&op, &vm).await
        }
        .await;
        op.finish(&result);
        result
    }

    async fn delete_inner(&self, op: &Op, vm: &VmInfo) -> R<()> {
        if vm.state == VmState::Running {
            self.stop_inner(op, vm).await?;
        } else if let Some(pid) = vm.pid.filter(|p| process::is_vm_process(*p, &vm.name)) {
            self.force_kill(pid, vm).await?;
        }
        op.phase("delete", &format!("removing {}", vm.name), 80);
        self.teardown_runtime(vm);
        if vm.nat {
            hostnat::uninstall(&SystemIptables, &vm.name, &vm.ip, &self.cfg.bridge)?;
        }
        let l = self.layout();
        self.disk.remove(&l.vm_disk(&vm.name))?;
        let dir = l.vm_dir(&vm.name);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(ApiError::internal(format!(
                    "removing {}: {e}",
                    dir.display()
                )));
            }
        }
        ssh::unpin_host_key(l, &vm.name)?;
        self.store.delete_vm(&vm.name)?;
        op.phase("deleted", &format!("{} deleted", vm.name), 100);
        Ok(())
    }

    /// Deletes every VM that is not running; returns their names. With
    /// `dry_run`, only lists them.
    pub async fn prune(self: &Arc<Self>, dry_run: bool, sink: Option<Sink>) -> R<Vec<String>> {
        self.refresh_all();
        let victims: Vec<VmInfo> = self
            .store
            .list_vms()?
            .into_iter()
            .filter(|v| lifecycle::is_prunable(v.state))
            .collect();
        let names: Vec<String> = victims.iter().map(|v| v.name.clone()).collect();
        if dry_run || victims.is_empty() {
            return Ok(names);
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let op = self.ops.begin("vm_prune", &refs, sink)?;
        let result = async {
            for vm in &victims {
                // Re-read under the lock: never delete one that came up.
                let cur = self.get(&vm.name)?;
                if lifecycle::is_prunable(cur.state) {
                    self.delete_inner(&op, &cur).await?;
                }
            }
            Ok(names)
        }
        .await;
        op.finish(&result);
        result
    }

    // ---- reads and housekeeping ---------------------------------------

    /// The guest's listening sockets, with endpoints by name when the VM
    /// has a DNS record.
    pub async fn ports(&self, name: &str) -> R<Vec<banger_api::PortInfo>> {
        let vm = self.show(name)?;
        if vm.state != VmState::Running {
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                format!(
                    "VM {name:?} is {}; start it with `banger vm start {name}` to see its ports",
                    vm.state
                ),
            ));
        }
        let out = ssh::exec(self.layout(), &vm.ip, "ss -H -tulnp", None).await?;
        if !out.status.success() {
            return Err(ApiError::internal(format!(
                "listing sockets in {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let host = if self.dns_running.load(std::sync::atomic::Ordering::Relaxed) {
            format!("{name}.vm")
        } else {
            vm.ip.clone()
        };
        Ok(crate::vm::ports::parse_ss(
            &String::from_utf8_lossy(&out.stdout),
            &host,
        ))
    }

    pub fn list(&self) -> R<Vec<VmInfo>> {
        self.refresh_all();
        Ok(self.store.list_vms()?)
    }

    pub fn show(&self, name: &str) -> R<VmInfo> {
        banger_api::validate_vm_name(name)?;
        self.refresh_all();
        self.get(name)
    }

    /// Marks running VMs whose VMM has exited (a guest that powered itself
    /// off) as stopped and cleans their runtime resources. VMs held by an
    /// operation are left to it.
    pub fn refresh_all(&self) {
        let Ok(vms) = self.store.list_vms() else {
            return;
        };
        for vm in vms {
            if vm.state != VmState::Running || self.ops.is_held(&vm.name) {
                continue;
            }
            let alive = vm.pid.is_some_and(|p| process::is_vm_process(p, &vm.name));
            if !alive {
                tracing::info!(vm = %vm.name, "VMM exited on its own; marking stopped");
                self.teardown_runtime(&vm);
                let _ = self.store.set_state(&vm.name, VmState::Stopped, None, None);
            }
        }
    }

    /// Keeps every console log under `max` bytes, keeping the newest half.
    pub fn cap_console_logs(&self, max: u64) {
        let Ok(vms) = self.store.list_vms() else {
            return;
        };
        for vm in vms {
            let path = self.layout().vm_console_log(&vm.name);
            if let Err(e) = crate::logcap::cap(&path, max) {
                tracing::warn!(vm = %vm.name, "capping {}: {e}", path.display());
            }
        }
    }
}

fn duplicate(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::AlreadyExists,
        format!("a VM named {name:?} already exists; pick another name or delete it first"),
    )
}

fn check_resources(spec: &VmSpec) -> R<()> {
    let bad = |m: String| Err(ApiError::new(ErrorCode::InvalidArgument, m));
    if spec.cpus == 0 || spec.cpus > MAX_CPUS {
        return bad(format!(
            "--cpus {} is out of range; use 1 to {MAX_CPUS}",
            spec.cpus
        ));
    }
    if spec.memory_mib < MIN_MEMORY_MIB {
        return bad(format!(
            "--memory {} MiB is too small; use at least {MIN_MEMORY_MIB}",
            spec.memory_mib
        ));
    }
    if spec.disk_gib == 0 || spec.disk_gib > MAX_DISK_GIB {
        return bad(format!(
            "--disk {} GiB is out of range; use 1 to {MAX_DISK_GIB}",
            spec.disk_gib
        ));
    }
    Ok(())
}
