//! `vm create`: validate, pick the backend and the disk strategy, take a
//! slot, provision (host key, config drive, root disk), boot. A create that
//! fails leaves nothing behind: the VM, its files and its host resources
//! are removed, and the name is free again.

use std::sync::Arc;

use banger_api::{VmInfo, VmSpec};

use super::boot::Restore;
use super::caller::Caller;
use super::error::{Context, VmError};
use super::record::VmRecord;
use super::service::{blocking, VmService, R};
use crate::disk;
use crate::guest::configdrive::Identity;
use crate::guest::ssh;
use crate::layout::ensure_dir;
use crate::opstate::{Op, Sink};
use crate::pathio::FromPathIo;
use crate::vmm::Vmm;

/// Resource limits `vm create` accepts.
const MAX_CPUS: u32 = 64;
const MIN_MEMORY_MIB: u32 = 256;
const MAX_DISK_GIB: u32 = 2048;

impl VmService {
    pub async fn create(
        self: &Arc<Self>,
        spec: VmSpec,
        caller: Caller,
        sink: Option<Sink>,
    ) -> R<VmInfo> {
        let owner_uid = caller.uid;
        banger_api::validate_vm_name(&spec.name)?;
        banger_api::validate_image_name(&spec.image)?;
        check_resources(&spec)?;
        check_keys(&spec.authorized_keys)?;
        let backend = self.backend_for_new_vm()?;
        let strategy = self.disk_for_new_vm(&spec, backend.as_ref())?;
        if self.store.get_vm(&spec.name)?.is_some() {
            return Err(VmError::Duplicate(spec.name));
        }
        let op = self.ops.begin("vm_create", &[&spec.name], sink)?;
        let result = self
            .create_inner(&op, spec, owner_uid, backend, strategy)
            .await;
        op.finish(&result);
        result
    }

    async fn create_inner(
        self: &Arc<Self>,
        op: &Op,
        spec: VmSpec,
        owner_uid: u32,
        backend: Arc<dyn Vmm>,
        strategy: disk::Strategy,
    ) -> R<VmInfo> {
        self.ensure_image(op, &spec.image).await?;
        self.check_disk_size(&spec)?;
        let draft = VmRecord::draft(&spec, backend.name(), strategy, owner_uid);
        let mut vm = self.insert_on_current_image(draft)?;
        let template = match spec.cold {
            true => None,
            false => self.template_for(&vm, backend.as_ref()),
        };
        if let Some(t) = &template {
            self.store.set_template(&vm.name, Some(&t.id))?;
            vm.template = Some(t.id.clone());
        }
        op.phase(
            "provision",
            &format!(
                "disk ({}), keys and config drive for {} ({})",
                strategy.as_str(),
                vm.name,
                vm.ip
            ),
            40,
        );
        let made = match self.provision(&vm, spec.authorized_keys.clone()).await {
            Ok(identity) => match &template {
                Some(t) => self.restore_or_boot_cold(op, vm.clone(), t, identity).await,
                None => self.boot(op, vm.clone(), 50).await,
            },
            Err(e) => Err(e),
        };
        match made {
            Ok(vm) => {
                // `--cold` asks for a cold boot only: no background build.
                if vm.template.is_none() && !spec.cold {
                    self.want_template(&vm, backend);
                }
                Ok(vm.info())
            }
            Err(e) => {
                let e = self.with_console_tail(&vm, e);
                self.rollback_create(&vm).await;
                Err(e)
            }
        }
    }

    /// The root disk strategy of a new VM: `vm create --disk-strategy`, else
    /// the daemon's, checked against the backend and the host.
    fn disk_for_new_vm(&self, spec: &VmSpec, backend: &dyn Vmm) -> R<disk::Strategy> {
        let choice = match spec.disk_strategy.as_deref() {
            Some(s) => s
                .parse::<disk::DiskChoice>()
                .map_err(|e| VmError::InvalidArgument(format!("--disk-strategy: {e}")))?,
            None => self.cfg.disk_strategy,
        };
        let vms_dir = self.layout().state_dir.join("vms");
        let formats = backend.capabilities().disk_formats;
        disk::pick(&self.host.disks, choice, backend.name(), formats, &vms_dir)
            .map(|d| d.strategy())
            .map_err(VmError::HostMissing)
    }

    fn check_disk_size(&self, spec: &VmSpec) -> R<()> {
        let rootfs = self.current_image(&spec.image)?.rootfs();
        let bytes = disk::probe::virtual_size(&rootfs);
        let min_gib = bytes.div_ceil(1 << 30) as u32;
        if spec.disk_gib < min_gib {
            return Err(VmError::InvalidArgument(format!(
                "--disk {} GiB is smaller than the image ({min_gib} GiB); use --disk {min_gib} or more",
                spec.disk_gib
            )));
        }
        Ok(())
    }

    /// Per-VM files: host key (pinned), config drive, root disk. Returns
    /// the identity the config drive holds.
    async fn provision(self: &Arc<Self>, vm: &VmRecord, keys: Vec<String>) -> R<Identity> {
        let this = self.clone();
        let vm = vm.clone();
        blocking(move || this.provision_blocking(&vm, &keys)).await
    }

    fn provision_blocking(&self, vm: &VmRecord, keys: &[String]) -> R<Identity> {
        let l = self.layout();
        let dir = l.vm_dir(&vm.name);
        // The VMM's uid reaches the files handed to it by name only.
        ensure_dir(&dir, 0o711).map_err(|e| VmError::Host(FromPathIo::io(&dir, e)))?;
        let host_key = l.vm_host_key(&vm.name);
        self.host
            .provision
            .generate_key(&host_key, &format!("{}.vm", vm.name))
            .context(|| format!("generating the host key of {}", vm.name))?;
        let read = |p: std::path::PathBuf| {
            std::fs::read_to_string(&p).map_err(|e| VmError::Host(FromPathIo::io(&p, e)))
        };
        let host_pub = read(ssh::pub_path(&host_key))?;
        let identity = Identity {
            hostname: vm.name.clone(),
            ip: vm.ip.clone(),
            mac: vm.mac.clone(),
            prefix: self.cfg.subnet.prefix,
            gateway: self.cfg.subnet.gateway().to_string(),
            dns: self.cfg.subnet.gateway().to_string(),
            authorized_key: std::iter::once(ssh::public_key(&l.client_key())?)
                .chain(keys.iter().map(|k| format!("{k}\n")))
                .collect(),
            host_key_private: read(host_key.clone())?,
            host_key_public: host_pub.clone(),
        };
        self.host
            .provision
            .build_config_drive(&identity, &l.vm_config_drive(&vm.name))
            .context(|| format!("building the config drive of {}", vm.name))?;
        let disk = self.host.disk(vm.disk).ok_or_else(|| {
            VmError::HostMissing(format!(
                "disk strategy {} is not available",
                vm.disk.as_str()
            ))
        })?;
        let dest = l.vm_disk(&vm.name, vm.disk);
        if !dest.exists() {
            disk.create(&vm.disk_base(l), &dest, vm.disk_gib)
                .context(|| format!("creating the root disk of {}", vm.name))?;
        }
        ssh::pin_host_key(l, &vm.name, &vm.ip, &host_pub)?;
        Ok(identity)
    }

    /// Restores `vm` from template `t`; if that fails, boots the VM cold on
    /// a disk made over the image. The template is marked broken (and goes)
    /// only when its state did not load or the restored guest did not take
    /// its identity (`blame_template`), not for a host failure on the way.
    async fn restore_or_boot_cold(
        self: &Arc<Self>,
        op: &Op,
        vm: VmRecord,
        t: &crate::template::Template,
        identity: Identity,
    ) -> R<VmRecord> {
        let restore = Restore {
            state: t.state(),
            identity,
        };
        let e = match self.boot_from(op, vm.clone(), 50, Some(restore)).await {
            Ok(vm) => return Ok(vm),
            Err(e @ VmError::Cancelled(_)) => return Err(e),
            Err(e) => e,
        };
        tracing::warn!(vm = %vm.name, template = %t.id, "restoring failed ({e}); booting cold");
        let mut vm = self.record(&vm.name)?;
        self.store.set_template(&vm.name, None)?;
        vm.template = None;
        self.collect_templates();
        let (this, cold) = (self.clone(), vm.clone());
        blocking(move || this.remake_disk(&cold)).await?;
        self.boot(op, vm, 50).await
    }

    /// Replaces `vm`'s root disk with a fresh one over its base.
    fn remake_disk(&self, vm: &VmRecord) -> R<()> {
        let l = self.layout();
        let disk = self.host.disk(vm.disk).ok_or_else(|| {
            VmError::HostMissing(format!(
                "disk strategy {} is not available",
                vm.disk.as_str()
            ))
        })?;
        let dest = l.vm_disk(&vm.name, vm.disk);
        disk.remove(&dest)
            .context(|| format!("removing the root disk of {}", vm.name))?;
        disk.create(&vm.disk_base(l), &dest, vm.disk_gib)
            .context(|| format!("creating the root disk of {}", vm.name))
    }

    /// Removes everything a failed create made. If that fails too, the VM
    /// stays in `error` for `vm delete` to finish.
    async fn rollback_create(&self, vm: &VmRecord) {
        let Ok(mut vm) = self.record(&vm.name) else {
            return;
        };
        if self.is_alive(&vm) {
            if let Err(e) = self.force_kill(&vm).await {
                tracing::warn!(vm = %vm.name, "rolling back: {e}");
            }
        }
        if let Err(e) = self.remove_everything(&vm).await {
            tracing::warn!(vm = %vm.name, "rolling back the create: {e}");
            let why = format!("a failed create could not be undone ({e}); delete it");
            let to = banger_api::VmState::Error;
            if let Err(t) = self.transition(&mut vm, to, None, Some(&why)) {
                tracing::warn!(vm = %vm.name, "{t}");
            }
        }
    }

    /// Adds the console's last line to a boot failure: the VM and its log
    /// are about to go.
    fn with_console_tail(&self, vm: &VmRecord, e: VmError) -> VmError {
        let log = std::fs::read(self.layout().vm_console_log(&vm.name)).unwrap_or_default();
        let text = String::from_utf8_lossy(&log);
        match text.lines().rev().map(str::trim).find(|l| !l.is_empty()) {
            Some(last) => e.context(format!("{} (last console line: {last:?})", vm.name)),
            None => e,
        }
    }
}

/// The host's memory (`MemTotal`), in MiB.
fn host_memory_mib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// Keys a caller asks the guest to authorize: one public key per line,
/// nothing else.
fn check_keys(keys: &[String]) -> R<()> {
    const KINDS: &[&str] = &["ssh-ed25519 ", "ssh-rsa ", "ecdsa-sha2-", "sk-ssh-ed25519@"];
    for k in keys {
        let ok = k.len() <= 8192
            && !k.contains(['\n', '\r', '\0'])
            && KINDS.iter().any(|p| k.starts_with(p))
            && k.split_whitespace().count() >= 2;
        if !ok {
            return Err(VmError::InvalidArgument(
                "an authorized key must be one OpenSSH public key line (ssh-ed25519 AAAA... comment)".into(),
            ));
        }
    }
    if keys.len() > 8 {
        return Err(VmError::InvalidArgument("at most 8 authorized keys".into()));
    }
    Ok(())
}

fn check_resources(spec: &VmSpec) -> R<()> {
    let bad = |m: String| Err(VmError::InvalidArgument(m));
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
    if let Some(total) = host_memory_mib() {
        if u64::from(spec.memory_mib) > total {
            return bad(format!(
                "--memory {} MiB is more than this host has ({total} MiB); use at most {total}",
                spec.memory_mib
            ));
        }
    }
    if spec.disk_gib == 0 || spec.disk_gib > MAX_DISK_GIB {
        return bad(format!(
            "--disk {} GiB is out of range; use 1 to {MAX_DISK_GIB}",
            spec.disk_gib
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(memory_mib: u32) -> VmSpec {
        VmSpec {
            name: "dev".into(),
            cpus: 1,
            memory_mib,
            disk_gib: 4,
            image: "default".into(),
            nat: false,
            authorized_keys: Vec::new(),
            cold: false,
            disk_strategy: None,
            ..Default::default()
        }
    }

    #[test]
    fn only_public_key_lines_are_authorized() {
        assert!(check_keys(&["ssh-ed25519 AAAAC3Nza alice@host".into()]).is_ok());
        for bad in [
            "ssh-ed25519 AAAA\ncommand=\"sh\" ssh-rsa AAAA",
            "command=\"sh\" ssh-ed25519 AAAA",
            "ssh-ed25519",
            "",
        ] {
            assert!(check_keys(&[bad.to_string()]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn memory_beyond_the_host_is_refused_with_the_limit() {
        let total = host_memory_mib().expect("/proc/meminfo");
        assert!(check_resources(&spec(512)).is_ok());
        let asked = u32::try_from(total + 1).unwrap_or(u32::MAX);
        let e = check_resources(&spec(asked)).unwrap_err().to_string();
        assert!(e.contains(&format!("use at most {total}")), "{e}");
        assert!(check_resources(&spec(128)).is_err());
    }
}
