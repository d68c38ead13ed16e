//! Reconciliation at daemon start: running VMs are re-adopted, dead ones
//! marked stopped, leaked taps and stray per-VM files removed, interrupted
//! operations marked failed.

use std::collections::HashSet;

use banger_api::VmState;

use super::VmService;
use crate::hostnat::{self, SystemIptables};
use crate::hostnet::tap;
use crate::vmm::process;

/// What reconciliation did, for the log and for tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub adopted: Vec<String>,
    pub marked_stopped: Vec<String>,
    pub removed_taps: Vec<String>,
    pub removed_dirs: Vec<String>,
    pub removed_nat: Vec<String>,
    pub failed_ops: usize,
}

pub fn reconcile(svc: &VmService) -> Report {
    let mut report = Report {
        failed_ops: svc.store.fail_interrupted_ops().unwrap_or(0),
        ..Report::default()
    };
    let vms = svc.store.list_vms().unwrap_or_default();
    let mut live_taps = HashSet::new();
    for vm in &vms {
        if vm.state == VmState::Stopped {
            svc.teardown_runtime(vm);
            continue;
        }
        let alive = vm.pid.is_some_and(|p| process::is_vm_process(p, &vm.name));
        if alive {
            live_taps.insert(vm.tap.clone());
            let _ = svc
                .store
                .set_state(&vm.name, VmState::Running, vm.pid, None);
            report.adopted.push(vm.name.clone());
        } else {
            svc.teardown_runtime(vm);
            let (state, why) = match vm.state {
                VmState::Creating => (
                    VmState::Error,
                    Some(
                        "the daemon stopped while creating this VM; delete it and create it again",
                    ),
                ),
                VmState::Error => (VmState::Error, vm.last_error.as_deref()),
                _ => (VmState::Stopped, None),
            };
            let _ = svc.store.set_state(&vm.name, state, None, why);
            if vm.state != VmState::Error {
                report.marked_stopped.push(vm.name.clone());
            }
        }
    }
    for t in tap::list().unwrap_or_default() {
        if !live_taps.contains(&t) && tap::remove(&t).is_ok() {
            report.removed_taps.push(t);
        }
    }
    let want: Vec<(String, String)> = vms
        .iter()
        .filter(|v| v.nat)
        .map(|v| (v.name.clone(), v.ip.clone()))
        .collect();
    match hostnat::reconcile(&SystemIptables, &want, &svc.cfg.bridge) {
        Ok(removed) => report.removed_nat = removed,
        Err(e) => tracing::warn!("reconciling NAT rules: {e}"),
    }
    let known: HashSet<String> = vms.iter().map(|v| v.name.clone()).collect();
    let layout = svc.layout();
    for parent in [layout.state_dir.join("vms"), layout.run_dir.join("vms")] {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !known.contains(&name) && std::fs::remove_dir_all(e.path()).is_ok() {
                report.removed_dirs.push(e.path().display().to_string());
            }
        }
    }
    tracing::info!(?report, "reconciled host state");
    report
}
