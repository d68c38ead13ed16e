//! Fault injection without VMs. Each operation (create, start, stop,
//! restart, kill, delete, workspace prepare and export, vm cp in and out)
//! first runs cleanly on the fake host, which numbers every host call it
//! makes. Then, for each numbered call, the operation runs again on a
//! fresh bed with that call
//! (a) failing and (b) crashing the daemon. After each run the suite checks
//! what a user would: nothing leaked (process, tap, NAT rule, disk or other
//! file, known_hosts line; DNS answers come from the store), and, after a
//! crash, a restarted daemon's reconcile leaves the VM absent or in a state
//! from which the next command succeeds; then `vm delete -f` leaves nothing
//! and the name can be used again.

use std::path::PathBuf;
use std::sync::{Arc, Once};

use banger_api::VmState;

use super::bed::{spec, Bed};
use crate::disk::Strategy;
use crate::host::fake::{FaultKind, SimulatedCrash};
use crate::vm::{reconcile, Caller, VmError, VmService};
use crate::workspace::ops::PrepareRequest;
use crate::workspace::Mode;

pub(super) const VM: &str = "vm1";
const ROOT: Caller = Caller::ROOT;

/// One step a user takes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Step {
    Create { nat: bool },
    Start,
    Stop,
    Restart,
    Kill,
    Delete,
    DeleteForce,
    Prepare(Mode),
    Export,
    CpIn,
    CpOut,
}

pub(super) async fn run_step(
    svc: &Arc<VmService>,
    repo: PathBuf,
    step: Step,
) -> Result<(), VmError> {
    match step {
        Step::Create { nat } => svc.create(spec(VM, nat), ROOT, None).await.map(drop),
        Step::Start => svc.start(ROOT, VM, None).await.map(drop),
        Step::Stop => svc.stop(ROOT, VM, None).await.map(drop),
        Step::Restart => svc.restart(ROOT, VM, None).await.map(drop),
        Step::Kill => svc.kill(ROOT, VM, "KILL", None).await.map(drop),
        Step::Delete => svc.delete(ROOT, VM, false, None).await,
        Step::DeleteForce => svc.delete(ROOT, VM, true, None).await,
        Step::Prepare(mode) => {
            let req = PrepareRequest {
                vm: VM.into(),
                repo,
                mode,
                readonly: false,
                include_ignored: false,
            };
            svc.workspace_prepare(ROOT, req, None).await.map(drop)
        }
        Step::Export => svc.workspace_export(ROOT, VM, None, None).await.map(drop),
        Step::CpIn => {
            let (tx, frames) = tokio::sync::mpsc::channel(1);
            let _ = tx.try_send(Ok(b"a tar".to_vec()));
            drop(tx);
            let req = crate::vm::copy::CpIn {
                vm: VM.into(),
                dest: "/root/x".into(),
                source_name: "x".into(),
                source_is_dir: false,
                contents: false,
            };
            svc.cp_in(ROOT, req, frames, None).await.map(drop)
        }
        Step::CpOut => svc.cp_out(ROOT, VM, "/root/x", false, None).await.map(drop),
    }
}

/// An operation under test and the steps that lead to it.
struct Scenario {
    /// The disk strategy the fake disk plays.
    disk: Strategy,
    setup: &'static [Step],
    op: Step,
    /// A failed run must leave no VM at all (a failed create rolls back).
    failure_leaves_no_vm: bool,
}

/// What one run saw.
struct Run {
    points: Vec<String>,
    panicked: bool,
    result: Option<Result<(), VmError>>,
}

async fn run_once(bed: &Arc<Bed>, sc: &Scenario, fault: Option<(usize, FaultKind)>) -> Run {
    let svc = bed.daemon();
    for s in sc.setup {
        if let Err(e) = run_step(&svc, bed.repo.clone(), *s).await {
            panic!("setup step {s:?} failed: {e}");
        }
    }
    bed.world.reset_calls();
    if let Some((index, kind)) = fault {
        bed.world.arm(index, kind);
    }
    let (repo, op) = (bed.repo.clone(), sc.op);
    let joined = tokio::spawn(async move { run_step(&svc, repo, op).await }).await;
    bed.world.disarm();
    let panicked = match &joined {
        Err(e) if e.is_panic() => true,
        Err(e) => panic!("operation task: {e}"),
        Ok(_) => false,
    };
    Run {
        points: bed.world.calls(),
        panicked,
        result: joined.ok(),
    }
}

/// After a run: reconcile if the daemon died, check for leaks, take the
/// next command a user would, delete, check again, reuse the name.
async fn check_after(bed: &Arc<Bed>, sc: &Scenario, what: &str, run: &Run) {
    let svc = bed.daemon();
    if run.panicked {
        reconcile::reconcile(&svc).await;
    }
    let leaks = bed.leaks();
    assert!(leaks.is_empty(), "{what}: leaked {leaks:?}");
    let failed = matches!(run.result, Some(Err(_)));
    let present = svc.store.get_vm(VM).expect("store");
    if failed && sc.failure_leaves_no_vm {
        assert!(
            present.is_none(),
            "{what}: a failed create left {present:?}"
        );
    }
    let repo = bed.repo.clone();
    let retry_delete = failed && matches!(sc.op, Step::Delete | Step::DeleteForce);
    let next = match present.as_ref().map(|v| v.state) {
        None => Step::Create { nat: true },
        // What the error says to do.
        Some(_) if retry_delete => Step::DeleteForce,
        Some(VmState::Running) => Step::Stop,
        Some(VmState::Stopped | VmState::Error) => Step::Start,
        Some(state) => panic!("{what}: the VM was left {state}"),
    };
    if let Err(e) = run_step(&svc, repo.clone(), next).await {
        panic!("{what}: the next command ({next:?}) failed: {e}");
    }
    if !matches!(next, Step::DeleteForce) {
        if let Err(e) = run_step(&svc, repo.clone(), Step::DeleteForce).await {
            panic!("{what}: delete -f failed: {e}");
        }
    }
    let leaks = bed.leaks();
    assert!(leaks.is_empty(), "{what}: after delete, leaked {leaks:?}");
    assert!(bed.vm_names().is_empty(), "{what}: the VM is still listed");
    assert!(bed.world.taps().is_empty() && bed.world.live_procs().is_empty());
    if let Err(e) = run_step(&svc, repo, Step::Create { nat: false }).await {
        panic!("{what}: the name cannot be used again: {e}");
    }
}

/// Keeps simulated crashes out of the test output; real panics still print.
fn quiet_crashes() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<SimulatedCrash>().is_none() {
                default(info);
            }
        }));
    });
}

/// Runs the scenario clean, then with each of its host calls failing and
/// crashing; returns how many fault runs it made.
async fn exercise(name: &str, sc: Scenario) -> usize {
    quiet_crashes();
    let clean = run_once(&Arc::new(Bed::with_disk(sc.disk)), &sc, None).await;
    match &clean.result {
        Some(Ok(())) => {}
        other => panic!(
            "{name}: the clean run failed: {:?}",
            other
                .as_ref()
                .map(|r| r.as_ref().err().map(|e| e.to_string()))
        ),
    }
    assert!(!clean.points.is_empty(), "{name}: no host call to fault");
    let mut runs = 0;
    for (index, point) in clean.points.iter().enumerate() {
        for kind in [FaultKind::Fail, FaultKind::Crash] {
            let bed = Arc::new(Bed::with_disk(sc.disk));
            let run = run_once(&bed, &sc, Some((index, kind))).await;
            let what = format!("{name}: {kind:?} at call {index} ({point})");
            if kind == FaultKind::Crash {
                assert!(run.panicked, "{what}: the crash did not happen");
            }
            check_after(&bed, &sc, &what, &run).await;
            runs += 1;
        }
    }
    eprintln!(
        "fault suite: {name}: {} host calls, {runs} fault runs",
        clean.points.len()
    );
    runs
}

macro_rules! fault_test {
    ($name:ident, $setup:expr, $op:expr, $no_vm:expr) => {
        fault_test!($name, Strategy::Copy, $setup, $op, $no_vm);
    };
    ($name:ident, $disk:expr, $setup:expr, $op:expr, $no_vm:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let runs = exercise(
                stringify!($name),
                Scenario {
                    disk: $disk,
                    setup: $setup,
                    op: $op,
                    failure_leaves_no_vm: $no_vm,
                },
            )
            .await;
            assert!(runs > 0);
        }
    };
}

const RUNNING: &[Step] = &[Step::Create { nat: true }];
const STOPPED: &[Step] = &[Step::Create { nat: true }, Step::Stop];
const PREPARED: &[Step] = &[Step::Create { nat: false }, Step::Prepare(Mode::FullCopy)];

fault_test!(create, &[], Step::Create { nat: true }, true);
fault_test!(start, STOPPED, Step::Start, false);
fault_test!(stop, RUNNING, Step::Stop, false);
fault_test!(restart, RUNNING, Step::Restart, false);
fault_test!(kill, RUNNING, Step::Kill, false);
fault_test!(delete_running, RUNNING, Step::DeleteForce, false);
fault_test!(delete_stopped, STOPPED, Step::Delete, false);
fault_test!(
    prepare_overlay,
    RUNNING,
    Step::Prepare(Mode::Overlay),
    false
);
fault_test!(
    prepare_full_copy,
    RUNNING,
    Step::Prepare(Mode::FullCopy),
    false
);
fault_test!(export, PREPARED, Step::Export, false);
fault_test!(cp_in, RUNNING, Step::CpIn, false);
fault_test!(cp_out, RUNNING, Step::CpOut, false);

// dm-snapshot: a device exists only while the VM runs; its COW file stays
// until delete. (reflink and copy disks are files only: the runs above.)
const DM: Strategy = Strategy::DmSnapshot;
fault_test!(dm_create, DM, &[], Step::Create { nat: false }, true);
fault_test!(dm_start, DM, STOPPED, Step::Start, false);
fault_test!(dm_stop, DM, RUNNING, Step::Stop, false);
fault_test!(dm_restart, DM, RUNNING, Step::Restart, false);
fault_test!(dm_kill, DM, RUNNING, Step::Kill, false);
fault_test!(dm_delete_running, DM, RUNNING, Step::DeleteForce, false);
fault_test!(dm_delete_stopped, DM, STOPPED, Step::Delete, false);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_snapshot_device_lives_only_while_its_vm_runs() {
    let bed = Arc::new(Bed::with_disk(DM));
    let svc = bed.daemon();
    run_step(&svc, bed.repo.clone(), Step::Create { nat: false })
        .await
        .expect("create");
    let disk = bed.cfg.layout.vm_disk(VM, DM);
    assert!(disk.ends_with("root.cow"));
    assert_eq!(bed.world.devices().len(), 1);
    assert_eq!(
        svc.record(VM).expect("vm").info().disk_strategy,
        "dm-snapshot"
    );
    for (step, device) in [
        (Step::Stop, false),
        (Step::Start, true),
        (Step::Kill, false),
    ] {
        run_step(&svc, bed.repo.clone(), step).await.expect("step");
        assert_eq!(!bed.world.devices().is_empty(), device, "after {step:?}");
        assert!(disk.exists(), "the COW file went at {step:?}");
    }
    run_step(&svc, bed.repo.clone(), Step::Delete)
        .await
        .expect("delete");
    assert!(!disk.exists() && bed.world.devices().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_that_exits_on_its_own_is_marked_stopped_and_cleaned() {
    let bed = Arc::new(Bed::new());
    let svc = bed.daemon();
    run_step(&svc, bed.repo.clone(), Step::Create { nat: false })
        .await
        .expect("create");
    bed.world.exit_process(VM);
    let vms = svc.list(ROOT).await.expect("list");
    assert_eq!(vms[0].state, VmState::Stopped);
    assert!(bed.leaks().is_empty(), "{:?}", bed.leaks());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_that_lives_but_does_not_answer_is_not_re_adopted() {
    let bed = Arc::new(Bed::new());
    run_step(&bed.daemon(), bed.repo.clone(), Step::Create { nat: false })
        .await
        .expect("create");
    bed.world.wedge_vmm(VM);
    let svc = bed.daemon();
    let report = reconcile::reconcile(&svc).await;
    assert!(report.adopted.is_empty(), "{report:?}");
    let vm = svc.record(VM).expect("vm");
    assert_eq!(vm.state, VmState::Error);
    assert!(vm
        .last_error
        .unwrap_or_default()
        .contains("does not answer"));
    run_step(&svc, bed.repo.clone(), Step::Kill)
        .await
        .expect("kill ends it");
    assert!(bed.leaks().is_empty(), "{:?}", bed.leaks());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_vmm_runs_as_its_own_uid_owning_only_its_files() {
    let bed = Arc::new(Bed::new());
    let svc = bed.daemon();
    run_step(&svc, bed.repo.clone(), Step::Create { nat: false })
        .await
        .expect("create");
    let vm = svc.record(VM).expect("vm");
    let uid = bed.cfg.vmm_uid_base + vm.slot;
    assert_eq!(
        bed.world.vmm_uid(VM),
        Some(Some(uid)),
        "the VMM runs as root"
    );
    let l = &bed.cfg.layout;
    for path in [
        l.vm_disk(VM, vm.disk),
        l.vm_config_drive(VM),
        l.vm_console_log(VM),
        l.vm_run_dir(VM),
    ] {
        assert_eq!(bed.world.owner_of(&path), Some(uid), "{}", path.display());
    }
    assert_eq!(
        bed.world.owner_of(&l.vm_host_key(VM)),
        None,
        "the host key stays root's"
    );
    run_step(
        &svc,
        bed.repo.clone(),
        Step::Prepare(crate::workspace::Mode::Overlay),
    )
    .await
    .expect("prepare");
    assert_eq!(bed.world.owner_of(&l.vm_workspace_image(VM)), Some(uid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_re_adopts_a_running_vm() {
    let bed = Arc::new(Bed::new());
    run_step(&bed.daemon(), bed.repo.clone(), Step::Create { nat: true })
        .await
        .expect("create");
    let report = reconcile::reconcile(&bed.daemon()).await;
    assert_eq!(report.adopted, ["vm1"]);
    assert!(report.removed_taps.is_empty() && report.removed_nat.is_empty());
    assert!(bed.leaks().is_empty(), "{:?}", bed.leaks());
}
