//! Templates on the service side (see [`crate::template`]): which template
//! a new VM is restored from, building one in the background after a cold
//! create, giving a restored VM its own identity, and removing templates
//! nobody needs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::boot::{CONFIG_SERIAL, ROOT_SERIAL};
use super::error::{Context, VmError};
use super::record::VmRecord;
use super::service::{blocking, VmService, R};
use crate::disk::Strategy;
use crate::guest::configdrive::{self, Identity};
use crate::guest::{restore, ssh};
use crate::image::Manifest;
use crate::layout::ensure_dir;
use crate::pathio::FromPathIo;
use crate::template::{self, Maker, Shape, Template};
use crate::vmm::qga::AgentRun;
use crate::vmm::{BootDrives, DiskFormat, Drive, LaunchSpec, Vmm};

/// How long a restored guest may take to apply its identity.
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(60);

/// At most this many template builds wait or run; a cold create of another
/// shape asks for none (the next one of that shape asks again).
pub(super) const MAX_QUEUE: usize = 2;

impl VmService {
    /// The template `vm` (just recorded, not yet provisioned) can be
    /// restored from, if templates are on and one of its shape is usable.
    pub(super) fn template_for(&self, vm: &VmRecord, backend: &dyn Vmm) -> Option<Template> {
        let shape = self.template_shape(vm, backend)?;
        template::find(self.layout(), &shape, &self.maker(backend))
    }

    /// The shape of `vm`, when VMs like it can have templates at all.
    fn template_shape(&self, vm: &VmRecord, backend: &dyn Vmm) -> Option<Shape> {
        let image = vm.image_files(self.layout());
        let ok = self.cfg.templates
            && backend.capabilities().snapshots
            // The restored disk is made over the template's disk.
            && template::strategy_allowed(vm.disk)
            && Manifest::read(&image)
                .is_some_and(|m| m.guest_agent && m.restore_protocol == restore::PROTOCOL);
        ok.then(|| Shape {
            image: vm.image.clone(),
            image_version: vm.image_version,
            cpus: vm.cpus,
            memory_mib: vm.memory_mib,
            disk_gib: vm.disk_gib,
            disk: vm.disk.as_str().to_string(),
        })
    }

    fn maker(&self, backend: &dyn Vmm) -> Maker {
        Maker::current(backend.name(), &backend.version())
    }

    /// After a cold create: builds the template of `vm`'s shape in the
    /// background, unless one exists or is being built.
    pub(super) fn want_template(self: &Arc<Self>, vm: &VmRecord, backend: Arc<dyn Vmm>) {
        let Some(shape) = self.template_shape(vm, backend.as_ref()) else {
            return;
        };
        if template::find(self.layout(), &shape, &self.maker(backend.as_ref())).is_some() {
            return;
        }
        if !self.templates_wanted_insert(&shape.key()) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let key = shape.key();
            // Unmarked however the build ends, a panic included.
            let _wanted = Wanted(&this, key.clone());
            let _one_at_a_time = this.template_lock.lock().await;
            let maker = this.maker(backend.as_ref());
            if template::find(this.layout(), &shape, &maker).is_none() {
                let t = this.clone();
                let (s, b) = (shape.clone(), backend.clone());
                match blocking(move || t.build_template(&s, b.as_ref())).await {
                    Ok(id) => tracing::info!(template = %id, "template built"),
                    Err(e) => tracing::warn!(template = %key, "template build failed: {e}"),
                }
            }
            this.collect_templates();
        });
    }

    /// Marks the build of `key` as queued; false when it already is, or
    /// when [`MAX_QUEUE`] builds are.
    fn templates_wanted_insert(&self, key: &str) -> bool {
        let mut wanted = self
            .templates_wanted
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        wanted.len() < MAX_QUEUE && wanted.insert(key.to_string())
    }

    fn templates_wanted_remove(&self, key: &str) {
        let mut wanted = self
            .templates_wanted
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        wanted.remove(key);
    }

    /// Boots a template of `shape` until sshd runs, saves it, and makes it
    /// usable; returns its id. Nothing of a failed build stays.
    fn build_template(&self, shape: &Shape, backend: &dyn Vmm) -> R<String> {
        let started = Instant::now();
        let l = self.layout();
        // Taken before the disk is made over the image, checked again once
        // the template is saved: an image removed and rebuilt in between
        // (same version number) makes the build worthless.
        let stamp = template::image_stamp(l, shape).ok_or_else(|| {
            VmError::ImageMissing(format!(
                "image {} version {} is gone",
                shape.image, shape.image_version
            ))
        })?;
        let id = template::new_id(shape);
        let dir = template::building_dir(l, &id);
        let run = l.template_run_dir(&id);
        let mut handle = None;
        let made = self.assemble_template(shape, backend, &id, &dir, &run, &mut handle);
        if let Some(h) = handle {
            let _ = backend.signal(&h, libc::SIGKILL);
            let name = template_vm_name(&id);
            let deadline = Instant::now() + Duration::from_secs(30);
            while backend.is_alive(&h, &name) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = std::fs::remove_dir_all(&run);
        let done = made.and_then(|()| {
            if template::image_stamp(l, shape).as_ref() != Some(&stamp) {
                return Err(VmError::Failed(format!(
                    "image {} version {} changed while its template was built",
                    shape.image, shape.image_version
                )));
            }
            finish_files(&dir, shape.strategy())?;
            let meta = template::Meta {
                shape: shape.clone(),
                maker: self.maker(backend),
                image_stamp: stamp,
                built_at: crate::store::now(),
                build_seconds: started.elapsed().as_secs_f64(),
            };
            template::write_meta(&dir, &meta)
                .map_err(|e| VmError::Host(FromPathIo::io(&dir, e)))?;
            let dest = l.template_dir(&id);
            std::fs::rename(&dir, &dest).map_err(|e| VmError::Host(FromPathIo::io(&dest, e)))
        });
        if done.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        done.map(|()| id)
    }

    fn assemble_template(
        &self,
        shape: &Shape,
        backend: &dyn Vmm,
        id: &str,
        dir: &std::path::Path,
        run: &std::path::Path,
        handle: &mut Option<crate::vmm::RuntimeHandle>,
    ) -> R<()> {
        let l = self.layout();
        let host_io = |p: &std::path::Path| {
            let p = p.to_path_buf();
            move |e| VmError::Host(FromPathIo::io(&p, e))
        };
        let templates = l.templates_dir();
        ensure_dir(&templates, 0o711).map_err(host_io(&templates))?;
        ensure_dir(dir, 0o711).map_err(host_io(dir))?;
        // The VMM's uid passes through to its own run directory.
        if let Some(parent) = run.parent() {
            ensure_dir(parent, 0o711).map_err(host_io(parent))?;
        }
        ensure_dir(run, 0o700).map_err(host_io(run))?;
        let image = l.image_version(&shape.image, shape.image_version);
        let strategy = shape.strategy();
        let disk = self
            .host
            .disk(strategy)
            .ok_or_else(|| VmError::HostMissing(format!("{} disks", strategy.as_str())))?;
        let root = dir.join(template::disk_file(strategy));
        disk.create(&image.rootfs(), &root, shape.disk_gib)
            .context(|| "creating the template's disk".to_string())?;
        let host_key = dir.join("host_key");
        self.host
            .provision
            .generate_key(&host_key, "template")
            .context(|| "generating the template's host key".to_string())?;
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).map_err(|e| VmError::Host(FromPathIo::io(&p, e)))
        };
        let identity = configdrive::Identity {
            hostname: "banger-template".into(),
            ip: String::new(),
            mac: String::new(),
            prefix: self.cfg.subnet.prefix,
            gateway: self.cfg.subnet.gateway().to_string(),
            dns: self.cfg.subnet.gateway().to_string(),
            authorized_key: ssh::public_key(&l.client_key())?,
            host_key_private: read(host_key.clone())?,
            host_key_public: read(ssh::pub_path(&host_key))?,
        };
        let config = dir.join("config.img");
        self.host
            .provision
            .build_config_drive(&identity, &config)
            .context(|| "building the template's config drive".to_string())?;
        let name = template_vm_name(id);
        let console = dir.join(template::CONSOLE);
        std::fs::write(&console, b"").map_err(host_io(&console))?;
        let spec = LaunchSpec {
            name: name.clone(),
            kernel: image.kernel_for(backend.capabilities().kernels),
            initrd: image.initrd(),
            cmdline: backend.kernel_cmdline(&name),
            drives: backend.drive_plan(BootDrives {
                root: Drive {
                    path: root.clone(),
                    format: disk.format(),
                    readonly: false,
                    serial: ROOT_SERIAL.into(),
                },
                config: Drive {
                    path: config.clone(),
                    format: DiskFormat::Raw,
                    readonly: true,
                    serial: CONFIG_SERIAL.into(),
                },
                workspace: None,
            }),
            tap: String::new(),
            mac: crate::store::AddressPlan::mac(&self.plan(), 0),
            cpus: shape.cpus,
            memory_mib: shape.memory_mib,
            console_log: console.clone(),
            pid_file: run.join("vmm.pid"),
            control_socket: run.join("control.sock"),
            run_as: self.template_vmm_identity(),
            stderr_log: run.join("vmm.stderr"),
            template: true,
            restore_from: None,
        };
        if let Some((uid, gid)) = spec.run_as {
            let paths = vec![run.to_path_buf(), console, root, config];
            self.host
                .provision
                .hand_over(&paths, uid, gid)
                .context(|| format!("handing the template's files to uid {uid}"))?;
        }
        *handle = Some(
            backend
                .launch(&spec)
                .context(|| "booting the template".to_string())?,
        );
        let h = handle.expect("just set");
        // Ready when the boot has finished (no unit still starting, which
        // every restored VM would go on running) and sshd runs, asked
        // through the guest agent.
        let deadline = Instant::now() + self.cfg.boot_timeout;
        let booted = AgentRun::new("/bin/systemctl", &["is-system-running", "--wait"]);
        let sshd = AgentRun::new("/bin/systemctl", &["is-active", "--quiet", "ssh.service"]);
        let mut last = String::from("no answer yet");
        loop {
            if !backend.is_alive(&h, &name) {
                return Err(VmError::Failed(format!(
                    "the template VM stopped while booting ({last})"
                )));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match backend.agent_exec(&spec.control_socket, &booted, left) {
                Ok(out) if matches!(out.stdout.as_str(), "running" | "degraded") => {
                    match backend.agent_exec(&spec.control_socket, &sshd, Duration::from_secs(10)) {
                        Ok(out) if out.code == 0 => break,
                        Ok(out) => {
                            return Err(VmError::Failed(format!(
                                "the template booted without sshd (ssh.service: exit {})",
                                out.code
                            )))
                        }
                        Err(e) => last = e.to_string(),
                    }
                }
                Ok(out) => last = format!("the boot ended {:?}", out.stdout),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(VmError::Failed(format!(
                    "the template did not finish booting in time: {last}"
                )));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        backend
            .snapshot(&spec.control_socket, &dir.join(template::STATE))
            .context(|| "saving the template".to_string())
    }

    /// The uid the template's VMM runs as: slot 0, which no VM has.
    fn template_vmm_identity(&self) -> Option<(u32, u32)> {
        let base = self.cfg.vmm_uid_base;
        (base != 0).then_some((base, base))
    }

    /// Gives a VM restored from a template its own `identity` (through the
    /// guest agent): time, RNG, machine-id, network, hostname, keys.
    pub(super) async fn reidentify(
        &self,
        vm: &VmRecord,
        backend: Arc<dyn Vmm>,
        identity: &Identity,
    ) -> R<()> {
        let mut seed = [0u8; 32];
        {
            use std::io::Read;
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut seed))
                .map_err(|e| {
                    VmError::Host(FromPathIo::io(std::path::Path::new("/dev/urandom"), e))
                })?;
        }
        let run = restore::identity_run(identity, std::time::SystemTime::now(), &seed);
        let ctl = self.layout().vm_control_socket(&vm.name);
        let out = blocking(move || backend.agent_exec(&ctl, &run, IDENTITY_TIMEOUT))
            .await
            .context(|| format!("giving {} its identity", vm.name))?;
        if out.code != 0 {
            return Err(VmError::Failed(format!(
                "giving {} its identity failed (exit {}): {}",
                vm.name,
                out.code,
                out.stderr.lines().last().unwrap_or("no message")
            )));
        }
        Ok(())
    }

    /// Starts a restored VM's console log with its template's boot, which
    /// is its own boot too, and a line saying so.
    pub(super) fn seed_console(&self, vm: &VmRecord, state: &std::path::Path) -> R<()> {
        let log = self.layout().vm_console_log(&vm.name);
        let template = state.parent().map(|d| d.join(template::CONSOLE));
        let mut text = template
            .and_then(|t| std::fs::read(t).ok())
            .unwrap_or_default();
        text.extend_from_slice(
            format!(
                "\n--- banger: {} restored from template {} ---\n",
                vm.name,
                vm.template.as_deref().unwrap_or("?")
            )
            .as_bytes(),
        );
        std::fs::write(&log, text).map_err(|e| VmError::Host(FromPathIo::io(&log, e)))
    }

    /// Passes `result` of a step only a template can fail (loading its
    /// state, the restored guest taking its identity) through; a failure
    /// marks `vm`'s template unusable. A cancelled step blames nothing.
    pub(super) fn blame_template<T>(&self, vm: &VmRecord, result: R<T>) -> R<T> {
        if let (Err(e), Some(id)) = (&result, &vm.template) {
            if !matches!(e, VmError::Cancelled(_)) {
                self.template_failed(id);
            }
        }
        result
    }

    /// Marks template `id` unusable after a restore from it failed.
    fn template_failed(&self, id: &str) {
        let mark = self.layout().template_dir(id).join(template::BROKEN);
        if let Err(e) = std::fs::write(&mark, b"") {
            tracing::warn!(template = %id, "marking the template broken: {e}");
        }
    }

    /// Removes the templates nobody needs: no VM is made over them, and
    /// they are unusable (another banger, VMM or format, an image version
    /// that is gone or was rebuilt under its number, a failed restore) or
    /// superseded.
    pub fn collect_templates(&self) {
        let Ok(in_use) = self.store.templates_in_use() else {
            return;
        };
        let l = self.layout();
        let usable = |t: &Template| {
            let vmm = self
                .host
                .backends
                .iter()
                .find(|b| b.name() == t.meta.maker.vmm);
            vmm.is_some_and(|b| self.maker(b.as_ref()) == t.meta.maker)
                && template::image_stamp(l, &t.meta.shape).as_ref() == Some(&t.meta.image_stamp)
                && !t.dir.join(template::BROKEN).exists()
        };
        for t in template::unneeded(&template::list(l), &in_use, usable) {
            match std::fs::remove_dir_all(&t.dir) {
                Ok(()) => tracing::info!(template = %t.id, "removed a template nobody needs"),
                Err(e) => tracing::warn!(template = %t.id, "removing the template: {e}"),
            }
        }
    }

    /// At start: half-built templates, their VMMs and run directories go.
    pub fn clean_unfinished_templates(&self) {
        let run = self.layout().run_dir.join("templates");
        for pid in unfinished_template_vmms(&run) {
            tracing::info!(pid, "stopping the VMM of an unfinished template build");
            let _ = crate::vmm::process::signal(pid, libc::SIGKILL);
        }
        for dir in template::unfinished(self.layout()) {
            let _ = std::fs::remove_dir_all(dir);
        }
        let _ = std::fs::remove_dir_all(run);
    }
}

/// The VMMs of template builds with their sockets under `run` (this
/// daemon's; another daemon on the host, with a state and run directory
/// of its own, may be building one now).
fn unfinished_template_vmms(run: &std::path::Path) -> Vec<u32> {
    crate::vmm::process::tagged_under(&crate::vmm::process_tag(TEMPLATE_PREFIX), true, run)
}

/// A queued or running template build; dropped, it is neither.
struct Wanted<'a>(&'a VmService, String);

impl Drop for Wanted<'_> {
    fn drop(&mut self) {
        self.0.templates_wanted_remove(&self.1);
    }
}

/// Template VMs are named apart from VMs (a VM name has no dot).
const TEMPLATE_PREFIX: &str = ".tpl-";

fn template_vm_name(id: &str) -> String {
    format!("{TEMPLATE_PREFIX}{id}")
}

/// A built template's files: the disk root's and readable by every VMM
/// (restored VMs read it as their backing file); what only the build
/// needed goes.
fn finish_files(dir: &std::path::Path, strategy: Strategy) -> R<()> {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no side effects.
    let root = unsafe { libc::geteuid() } == 0;
    let disk = dir.join(template::disk_file(strategy));
    // The console log stays: it is the boot of every VM restored from it.
    let console = dir.join(template::CONSOLE);
    if root {
        for f in [&disk, &console] {
            std::os::unix::fs::chown(f, Some(0), Some(0))
                .map_err(|e| VmError::Host(FromPathIo::io(f, e)))?;
        }
    }
    std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| VmError::Host(FromPathIo::io(&disk, e)))?;
    for f in ["config.img", "host_key", "host_key.pub"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another daemon's template build (its sockets under another run
    /// directory) is not this daemon's to stop.
    #[test]
    fn only_this_daemons_unfinished_template_vmms_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let (mine, theirs) = (dir.path().join("mine"), dir.path().join("theirs"));
        let tag = crate::vmm::process_tag(&template_vm_name("x"));
        let sock = format!("unix:{}/x/control.sock,server=on", theirs.display());
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30; :", &tag, &sock])
            .spawn()
            .unwrap();
        let pid = child.id();
        // Until it has run `exec`, the child still shows this test's
        // command line.
        let start = std::time::Instant::now();
        while !std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&tag))
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let found = (
            unfinished_template_vmms(&mine).contains(&pid),
            unfinished_template_vmms(&theirs).contains(&pid),
        );
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found, (false, true));
    }
}
