//! A guest that never answers cannot hold its VM: `vm kill` and
//! `vm delete -f` cancel the stuck operation (its `ssh` gone) and win; a
//! VMM that dies under an operation ends it; every guest call has a
//! deadline.

use std::sync::Arc;
use std::time::Duration;

use banger_api::{OpState, VmState};

use super::bed::{spec, Bed};
use super::faults::{run_step, Step, VM};
use crate::vm::{Caller, VmError, VmService};

/// A running VM with a workspace whose export hangs in the guest; returns
/// the export's task once the export holds the VM.
async fn stuck_export(
    bed: &Arc<Bed>,
) -> (
    Arc<VmService>,
    tokio::task::JoinHandle<Result<u64, VmError>>,
) {
    let svc = bed.daemon();
    run_step(&svc, bed.repo.clone(), Step::Create { nat: false })
        .await
        .expect("create");
    run_step(
        &svc,
        bed.repo.clone(),
        Step::Prepare(crate::workspace::Mode::FullCopy),
    )
    .await
    .expect("prepare");
    bed.world.hang_guest("sh");
    let task = {
        let svc = svc.clone();
        tokio::spawn(async move { svc.workspace_export(Caller::ROOT, VM, None, None).await })
    };
    for _ in 0..200 {
        if bed.world.guest_running() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        bed.world.guest_running(),
        1,
        "the export did not reach the guest"
    );
    assert!(svc.ops.is_held(VM));
    (svc, task)
}

fn last_op_state(svc: &VmService, kind: &str) -> OpState {
    svc.store
        .list_ops(20)
        .expect("ops")
        .into_iter()
        .find(|o| o.kind == kind)
        .map(|o| o.state)
        .expect("the operation is recorded")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_wins_over_a_stuck_export() {
    let bed = Arc::new(Bed::new());
    let (svc, export) = stuck_export(&bed).await;
    let vm = svc
        .kill(Caller::ROOT, VM, "KILL", None)
        .await
        .expect("kill must win");
    assert_eq!(vm.state, VmState::Stopped);
    let err = export
        .await
        .expect("task")
        .expect_err("export was cancelled");
    assert!(matches!(err, VmError::Cancelled(_)), "{err}");
    assert!(err.to_string().contains("cancelled by vm_kill"), "{err}");
    assert_eq!(last_op_state(&svc, "workspace_export"), OpState::Cancelled);
    assert_eq!(bed.world.guest_running(), 0, "the stuck ssh was not killed");
    assert!(bed.leaks().is_empty(), "{:?}", bed.leaks());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_force_wins_over_a_stuck_export() {
    let bed = Arc::new(Bed::new());
    let (svc, export) = stuck_export(&bed).await;
    svc.delete(Caller::ROOT, VM, true, None)
        .await
        .expect("delete -f must win");
    assert!(export.await.expect("task").is_err());
    assert_eq!(bed.world.guest_running(), 0);
    assert!(bed.vm_names().is_empty());
    assert!(bed.leaks().is_empty(), "{:?}", bed.leaks());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_that_dies_under_an_operation_ends_it_and_the_vm_is_stopped() {
    let bed = Arc::new(Bed::new());
    let (svc, export) = stuck_export(&bed).await;
    bed.world.exit_process(VM);
    let err = tokio::time::timeout(Duration::from_secs(10), export)
        .await
        .expect("the export noticed the dead VMM")
        .expect("task")
        .expect_err("the export failed");
    assert!(
        err.to_string().contains("exited during the operation"),
        "{err}"
    );
    assert_eq!(svc.record(VM).expect("vm").state, VmState::Stopped);
    assert_eq!(bed.world.guest_running(), 0);
    assert!(bed.leaks().is_empty(), "{:?}", bed.leaks());
    run_step(&svc, bed.repo.clone(), Step::Start)
        .await
        .expect("it starts again");
}

#[tokio::test]
async fn every_guest_call_has_a_deadline() {
    let bed = Arc::new(Bed::new());
    let svc = bed.daemon();
    svc.create(spec(VM, false), Caller::ROOT, None)
        .await
        .expect("create");
    bed.world.hang_guest("sleep");
    let vm = svc.record(VM).expect("vm");
    let err = svc
        .guest_exec(&vm, "sleep 3600", None, Duration::from_millis(200))
        .await
        .expect_err("the deadline passed");
    let msg = err.to_string();
    assert!(
        msg.contains("within 0s") && msg.contains("banger vm kill vm1"),
        "{msg}"
    );
    assert_eq!(bed.world.guest_running(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_streams_its_patch_in_chunks_then_says_how_big() {
    let bed = Arc::new(Bed::new());
    let svc = bed.daemon();
    run_step(&svc, bed.repo.clone(), Step::Create { nat: false })
        .await
        .expect("create");
    run_step(
        &svc,
        bed.repo.clone(),
        Step::Prepare(crate::workspace::Mode::FullCopy),
    )
    .await
    .expect("prepare");
    let (tx, mut rx) = tokio::sync::mpsc::channel(crate::opstate::SINK_DEPTH);
    let export = {
        let svc = svc.clone();
        tokio::spawn(async move { svc.workspace_export(Caller::ROOT, VM, None, Some(tx)).await })
    };
    let mut patch = Vec::new();
    let mut chunks = 0;
    while let Some(event) = rx.recv().await {
        if let banger_api::Event::Data(chunk) = event {
            use base64::Engine;
            patch.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(chunk)
                    .expect("base64"),
            );
            chunks += 1;
        }
    }
    let bytes = export.await.expect("task").expect("export");
    assert_eq!(patch, b"diff --git a/x b/x\n");
    assert_eq!(bytes, patch.len() as u64);
    assert!(chunks > 1, "the patch came whole, not streamed");
}
