//! Reconciliation at daemon start: running VMs are re-adopted, dead ones
//! marked stopped (or `error` when they died being created), leaked taps,
//! NAT rules, stray per-VM files and image versions no VM uses removed,
//! interrupted operations marked failed. Every state change goes through
//! the transition table.

use std::collections::HashSet;

use banger_api::VmState;

use super::record::VmRecord;
use super::service::{blocking, VmService};
use crate::hostnat;

/// What reconciliation did, for the log and for tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub adopted: Vec<String>,
    pub marked_stopped: Vec<String>,
    pub removed_taps: Vec<String>,
    pub removed_dirs: Vec<String>,
    pub removed_nat: Vec<String>,
    /// Disk devices set up for disks no VM has (see `CowDisk::leaked`).
    pub leaked_disks: Vec<String>,
    /// Image versions no VM uses that are not current, as `NAME vVERSION`
    /// (a crash came between a build or a delete and their removal).
    pub removed_images: Vec<String>,
    pub failed_ops: usize,
}

pub async fn reconcile(svc: &VmService) -> Report {
    let mut report = Report {
        failed_ops: svc.store.fail_interrupted_ops().unwrap_or(0),
        ..Report::default()
    };
    let vms = svc.store.list_vms().unwrap_or_default();
    let mut live_taps = HashSet::new();
    for vm in vms.clone() {
        if adopt_or_settle(svc, vm.clone(), &mut report).await {
            live_taps.insert(vm.tap.clone());
        }
    }
    let net = svc.host.net.clone();
    let taps = blocking(move || net.list_taps()).await.unwrap_or_default();
    for t in taps.into_iter().filter(|t| !live_taps.contains(t)) {
        let net = svc.host.net.clone();
        let tap = t.clone();
        if blocking(move || net.remove_tap(&tap)).await.is_ok() {
            report.removed_taps.push(t);
        }
    }
    let want: Vec<(String, String)> = vms
        .iter()
        .filter(|v| v.nat)
        .map(|v| (v.name.clone(), v.ip.clone()))
        .collect();
    let (nat, bridge) = (svc.host.nat.clone(), svc.cfg.bridge.clone());
    match blocking(move || hostnat::reconcile(nat.as_ref(), &want, &bridge)).await {
        Ok(removed) => report.removed_nat = removed,
        Err(e) => tracing::warn!("reconciling NAT rules: {e}"),
    }
    report.removed_dirs = remove_stray_dirs(svc, &vms);
    for image in crate::image::catalog::names(svc.layout()) {
        let removed = svc.prune_image(&image, true).await;
        report.removed_images.extend(removed);
    }
    crate::workspace::image::sweep_staging();
    svc.clean_unfinished_templates();
    svc.collect_templates();
    let known: Vec<_> = vms
        .iter()
        .map(|v| svc.layout().vm_disk(&v.name, v.disk))
        .collect();
    for disk in &svc.host.disks {
        report.leaked_disks.extend(disk.leaked(&known));
    }
    if !report.leaked_disks.is_empty() {
        tracing::warn!(leaked = ?report.leaked_disks, "disk devices no VM owns");
    }
    tracing::info!(?report, "reconciled host state");
    report
}

/// Re-adopts `vm` if its VMM lives (true), else settles its state and
/// removes its runtime resources.
async fn adopt_or_settle(svc: &VmService, mut vm: VmRecord, report: &mut Report) -> bool {
    if vm.state != VmState::Stopped && svc.is_alive(&vm) && !svc.vmm_responds(&vm).await {
        let why = format!(
            "its VMM (pid {}) runs but does not answer on its control channel; `banger vm kill {}` ends it",
            vm.runtime.map(|r| r.pid).unwrap_or_default(),
            vm.name
        );
        tracing::warn!(vm = %vm.name, "{why}");
        let runtime = vm.runtime;
        if let Err(e) = svc.transition(&mut vm, VmState::Error, runtime, Some(&why)) {
            tracing::warn!(vm = %vm.name, "{e}");
        }
        return false;
    }
    if vm.state != VmState::Stopped && svc.is_alive(&vm) {
        let settled = match vm.state {
            VmState::Running => Ok(()),
            // It died in the middle of a stop or a first boot: a live VMM
            // means a running VM.
            _ => {
                let runtime = vm.runtime;
                svc.transition(&mut vm, VmState::Running, runtime, None)
            }
        };
        match settled {
            Ok(()) => {
                report.adopted.push(vm.name.clone());
                return true;
            }
            Err(e) => tracing::warn!(vm = %vm.name, "re-adopting: {e}"),
        }
    }
    stop_unrecorded(svc, &vm).await;
    if let Err(e) = svc.teardown_runtime(&vm).await {
        tracing::warn!(vm = %vm.name, "{e}");
    }
    let (to, why): (VmState, Option<String>) = match vm.state {
        VmState::Stopped => return false,
        VmState::Creating => (
            VmState::Error,
            Some("the daemon stopped while creating this VM; delete it and create it again".into()),
        ),
        VmState::Error => (VmState::Error, vm.last_error.clone()),
        _ => (VmState::Stopped, None),
    };
    let was = vm.state;
    match svc.transition(&mut vm, to, None, why.as_deref()) {
        Ok(()) if was != VmState::Error => report.marked_stopped.push(vm.name.clone()),
        Ok(()) => {}
        Err(e) => tracing::warn!(vm = %vm.name, "{e}"),
    }
    false
}

/// Kills the VMMs of `vm` the store has no live handle for: the daemon
/// died after starting one and before recording it (a restore from a
/// template is seconds of that), so nothing else would ever stop it.
async fn stop_unrecorded(svc: &VmService, vm: &VmRecord) {
    let Ok(backend) = svc.backend_of(vm) else {
        return;
    };
    let (name, control) = (vm.name.clone(), svc.layout().vm_control_socket(&vm.name));
    blocking(move || {
        for h in backend.unrecorded(&name, &control) {
            tracing::warn!(vm = %name, pid = h.pid, "stopping a VMM the daemon had not recorded");
            if let Err(e) = backend.signal(&h, libc::SIGKILL) {
                tracing::warn!(vm = %name, "{e}");
            }
        }
    })
    .await;
}

/// Per-VM directories no VM owns, and run directories of VMs not running.
fn remove_stray_dirs(svc: &VmService, vms: &[VmRecord]) -> Vec<String> {
    let known: HashSet<&str> = vms.iter().map(|v| v.name.as_str()).collect();
    let layout = svc.layout();
    let mut removed = Vec::new();
    for parent in [layout.state_dir.join("vms"), layout.run_dir.join("vms")] {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !known.contains(name.as_str()) && std::fs::remove_dir_all(e.path()).is_ok() {
                removed.push(e.path().display().to_string());
            }
        }
    }
    removed
}
