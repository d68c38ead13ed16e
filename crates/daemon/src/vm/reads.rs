//! Reads (`vm list`, `vm show`, `vm ports`, what `vm ssh` and `vm logs`
//! need) and housekeeping (VMMs that exited on their own, console logs).

use banger_api::{PortInfo, SshInfo, VmInfo, VmState};

use super::caller::Caller;
use super::error::VmError;
use super::runner;
use super::service::{VmService, R};

/// The most of a console log one read returns.
pub const LOG_CHUNK: u64 = 256 << 10;

/// How long listing a guest's sockets may take.
const PORTS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

impl VmService {
    /// The VMs `caller` may see.
    pub async fn list(&self, caller: Caller) -> R<Vec<VmInfo>> {
        self.refresh_all().await;
        Ok(self
            .store
            .list_vms()?
            .iter()
            .filter(|v| caller.may_see(v))
            .map(|v| v.info())
            .collect())
    }

    pub async fn show(&self, caller: Caller, name: &str) -> R<VmInfo> {
        banger_api::validate_vm_name(name)?;
        self.refresh_all().await;
        Ok(self.record_for(caller, name)?.info())
    }

    /// Recent operations on VMs `caller` may see (root: all).
    pub fn ops_list(&self, caller: Caller) -> R<Vec<banger_api::OpInfo>> {
        let ops = self.store.list_ops(200)?;
        if caller.is_root() {
            return Ok(ops.into_iter().take(50).collect());
        }
        // The caller's VMs, with when each was made: an earlier VM of the
        // same name (another user's, maybe) is not theirs to see.
        let mine: std::collections::HashMap<String, i64> = self
            .store
            .list_vms()?
            .into_iter()
            .filter(|v| caller.may_see(v))
            .map(|v| (v.name, v.created_at))
            .collect();
        let theirs = |o: &banger_api::OpInfo| {
            let made = o.vm.as_ref().and_then(|v| mine.get(v));
            // The create operation starts a moment before the row.
            made.is_some_and(|made| o.started_at + 2 >= *made)
        };
        Ok(ops.into_iter().filter(theirs).take(50).collect())
    }

    /// What the CLI needs to run OpenSSH against a running VM.
    pub async fn ssh_info(&self, caller: Caller, name: &str) -> R<SshInfo> {
        banger_api::validate_vm_name(name)?;
        self.refresh_all().await;
        let vm = self.record_for(caller, name)?;
        runner::running(&vm)?;
        let l = self.layout();
        Ok(SshInfo {
            ip: vm.ip,
            user: "root".into(),
            identity_file: l.client_key().display().to_string(),
            known_hosts: l.known_hosts().display().to_string(),
            config_file: l.ssh_config().display().to_string(),
            known_hosts_line: crate::guest::ssh::known_hosts_line(l, name).unwrap_or_default(),
        })
    }

    /// The pinned host keys of the VMs `caller` may see.
    pub fn known_hosts(&self, caller: Caller) -> R<Vec<String>> {
        Ok(self
            .store
            .list_vms()?
            .iter()
            .filter(|v| caller.may_see(v))
            .filter_map(|v| crate::guest::ssh::known_hosts_line(self.layout(), &v.name))
            .collect())
    }

    /// Up to [`LOG_CHUNK`] bytes of the serial console from `offset`, and
    /// the offset to ask for next (the log may have been cut short since:
    /// an offset past its end starts over).
    pub fn console_log_read(&self, caller: Caller, name: &str, offset: u64) -> R<(Vec<u8>, u64)> {
        use std::io::{Read, Seek, SeekFrom};
        banger_api::validate_vm_name(name)?;
        self.record_for(caller, name)?;
        let path = self.layout().vm_console_log(name);
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(VmError::Host(crate::pathio::FromPathIo::io(&path, e))),
        };
        let io = |e| VmError::Host(crate::pathio::FromPathIo::io(&path, e));
        let len = file.metadata().map_err(io)?.len();
        let start = if offset > len { 0 } else { offset };
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut data = Vec::new();
        file.take(LOG_CHUNK).read_to_end(&mut data).map_err(io)?;
        let next = start + data.len() as u64;
        Ok((data, next))
    }

    /// The guest's listening sockets, with endpoints by name when the VM
    /// has a DNS record.
    pub async fn ports(&self, caller: Caller, name: &str) -> R<Vec<PortInfo>> {
        banger_api::validate_vm_name(name)?;
        self.refresh_all().await;
        let vm = self.record_for(caller, name)?;
        if vm.state != VmState::Running {
            return Err(VmError::state(
                name,
                vm.state,
                format!("start it with `banger vm start {name}` to see its ports"),
            ));
        }
        let out = self
            .guest_exec(&vm, "ss -H -tulnp", None, PORTS_DEADLINE)
            .await?;
        if !out.status.success() {
            return Err(VmError::Failed(format!(
                "listing sockets in {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let host = if self.dns_running.load(std::sync::atomic::Ordering::Relaxed) {
            format!("{name}.vm")
        } else {
            vm.ip.clone()
        };
        Ok(super::ports::parse_ss(
            &String::from_utf8_lossy(&out.stdout),
            &host,
        ))
    }

    /// Marks running VMs whose VMM has exited (a guest that powered itself
    /// off) as stopped and cleans their runtime resources. VMs held by an
    /// operation are left to it.
    pub async fn refresh_all(&self) {
        let Ok(vms) = self.store.list_vms() else {
            return;
        };
        for mut vm in vms {
            if vm.state != VmState::Running || self.ops.is_held(&vm.name) || self.is_alive(&vm) {
                continue;
            }
            tracing::info!(vm = %vm.name, "VMM exited on its own; marking stopped");
            if let Err(e) = self.settle_exited(&mut vm, VmState::Stopped).await {
                tracing::warn!(vm = %vm.name, "{e}");
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
