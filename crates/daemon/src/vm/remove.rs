//! `vm delete` and `vm prune`: everything a VM owns goes (process, tap,
//! NAT rules, disk, files, pinned host key, DNS record with the row), and
//! the superseded image version it was the last VM on.

use std::sync::Arc;

use banger_api::VmState;

use super::caller::Caller;
use super::error::{Context, VmError};
use super::lifecycle;
use super::record::VmRecord;
use super::runner::{self, Claim, OpKind};
use super::service::{blocking, VmService, R};
use crate::guest::ssh;
use crate::hostnat;
use crate::opstate::{Op, Sink};
use crate::pathio::FromPathIo;

impl VmService {
    pub async fn delete(
        self: &Arc<Self>,
        caller: Caller,
        name: &str,
        force: bool,
        sink: Option<Sink>,
    ) -> R<()> {
        let kind = if force {
            // `-f` always wins, like kill.
            OpKind {
                name: "vm_delete",
                check: runner::any_state,
                claim: Claim::Preempt,
                needs_vmm: false,
            }
        } else {
            OpKind {
                name: "vm_delete",
                check: lifecycle::can_delete,
                claim: Claim::Exclusive,
                needs_vmm: false,
            }
        };
        self.run_op(kind, caller, name, sink, async |op, vm| {
            self.delete_inner(op, vm).await
        })
        .await
    }

    async fn delete_inner(&self, op: &Op, vm: VmRecord) -> R<()> {
        let vm = if vm.state == VmState::Running {
            self.stop_inner(op, vm).await?
        } else {
            if self.is_alive(&vm) {
                self.force_kill(&vm).await?;
            }
            vm
        };
        op.phase("delete", &format!("removing {}", vm.name), 80);
        if let Err(e) = self.remove_everything(&vm).await {
            let why = format!(
                "deleting did not finish ({e}); run `banger vm delete {}` again",
                vm.name
            );
            let mut vm = vm;
            if let Err(t) = self.transition(&mut vm, VmState::Error, None, Some(&why)) {
                tracing::warn!(vm = %vm.name, "{t}");
            }
            return Err(e);
        }
        op.phase("deleted", &format!("{} deleted", vm.name), 100);
        Ok(())
    }

    /// Removes every resource of a VM whose VMM is gone, the row last: a
    /// step that fails leaves the row, so `vm delete` can finish the job.
    pub(super) async fn remove_everything(&self, vm: &VmRecord) -> R<()> {
        self.teardown_runtime(vm).await?;
        if vm.nat {
            let nat = self.host.nat.clone();
            let (name, ip, bridge) = (vm.name.clone(), vm.ip.clone(), self.cfg.bridge.clone());
            blocking(move || hostnat::uninstall(nat.as_ref(), &name, &ip, &bridge))
                .await
                .context(|| format!("removing the NAT rules of {}", vm.name))?;
        }
        let l = self.layout().clone();
        let disk = self.host.disk(vm.disk);
        let vm2 = vm.clone();
        blocking(move || -> R<()> {
            if let Some(disk) = disk {
                disk.remove(&l.vm_disk(&vm2.name, vm2.disk))
                    .context(|| format!("removing the disk of {}", vm2.name))?;
            }
            let dir = l.vm_dir(&vm2.name);
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(VmError::Host(FromPathIo::io(&dir, e)))
                }
                _ => {}
            }
            ssh::unpin_host_key(&l, &vm2.name)?;
            Ok(())
        })
        .await?;
        self.store.delete_vm(&vm.name)?;
        // Its image version goes too if it was the last VM on it and a
        // newer one is current.
        self.prune_image(&vm.image, false).await;
        // And a template nobody needs any more (its image version gone, or
        // this the last VM made over a superseded one).
        self.collect_templates();
        Ok(())
    }

    /// Deletes every VM that is not running; returns their names. With
    /// `dry_run`, only lists them.
    pub async fn prune(
        self: &Arc<Self>,
        caller: Caller,
        dry_run: bool,
        sink: Option<Sink>,
    ) -> R<Vec<String>> {
        self.refresh_all().await;
        let victims: Vec<VmRecord> = self
            .store
            .list_vms()?
            .into_iter()
            .filter(|v| caller.may_see(v) && lifecycle::is_prunable(v.state))
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
                let cur = self.record(&vm.name)?;
                if lifecycle::is_prunable(cur.state) {
                    self.delete_inner(&op, cur).await?;
                }
            }
            Ok(names)
        }
        .await;
        op.finish(&result);
        result
    }
}
