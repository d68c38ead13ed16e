//! VM lifetimes and `vm create --repo` on the fake host: a VM goes when
//! its lifetime ends (the fake clock moves, not the test's wall time), a
//! daemon restart keeps the deadline, `set-ttl` moves or clears it; a
//! create with a repo that fails before the VM (not a repo) makes nothing,
//! and one that fails after the boot leaves no VM.

use std::sync::Arc;

use banger_api::{ApiError, ErrorCode, WorkspaceSpec};

use super::bed::{spec, Bed};
use crate::host::fake::FaultKind;
use crate::vm::{Caller, VmError};

const ROOT: Caller = Caller::ROOT;
const ALICE: Caller = Caller {
    uid: 1000,
    gid: 1000,
};

fn code(e: VmError) -> ErrorCode {
    ApiError::from(e).code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_goes_when_its_lifetime_ends_and_a_restart_keeps_the_deadline() {
    let bed = Arc::new(Bed::new());
    let svc = bed.daemon();
    let mut s = spec("short", false);
    s.ttl_secs = Some(90);
    let info = svc.create_with(s, ROOT, None).await.expect("create");
    let now = svc.host.clock.now();
    let left = info.expires_at.expect("a deadline") - now;
    assert!((89..=90).contains(&left), "{left}");
    svc.create_with(spec("forever", false), ROOT, None)
        .await
        .expect("create");
    assert!(svc.expire_due().await.is_empty(), "nothing is due yet");

    // The daemon restarts; the deadline is in the store.
    let svc = bed.daemon();
    crate::vm::reconcile::reconcile(&svc).await;
    let listed = svc.list(ROOT).await.expect("list");
    let short = listed.iter().find(|v| v.name == "short").expect("short");
    assert_eq!(short.expires_at, info.expires_at);
    assert_eq!(
        listed
            .iter()
            .find(|v| v.name == "forever")
            .unwrap()
            .expires_at,
        None
    );

    bed.world.advance_clock(60);
    assert!(svc.expire_due().await.is_empty(), "30 s are left");
    bed.world.advance_clock(31);
    assert_eq!(svc.expire_due().await, ["short"]);
    assert_eq!(bed.vm_names().into_iter().collect::<Vec<_>>(), ["forever"]);
    assert!(bed.leaks().is_empty(), "{:?}", bed.leaks());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_ttl_moves_or_clears_a_deadline_for_the_vms_owner_only() {
    let bed = Arc::new(Bed::new());
    let svc = bed.daemon();
    svc.create_with(spec("dev", false), ROOT, None)
        .await
        .expect("create");
    let set = svc.set_ttl(ROOT, "dev", Some(30), None).await.expect("set");
    assert_eq!(set.expires_at, Some(svc.host.clock.now() + 30));
    // Another user does not see root's VM.
    let e = svc.set_ttl(ALICE, "dev", Some(30), None).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::NotFound);
    // Out of range: refused, nothing changed.
    let e = svc.set_ttl(ROOT, "dev", Some(0), None).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::InvalidArgument);
    assert_eq!(svc.record("dev").unwrap().expires_at, set.expires_at);
    let cleared = svc.set_ttl(ROOT, "dev", None, None).await.expect("clear");
    assert_eq!(cleared.expires_at, None);
    bed.world.advance_clock(3_600);
    assert!(svc.expire_due().await.is_empty());
    // A lifetime ends while the VM is stopped, too.
    svc.stop(ROOT, "dev", None).await.expect("stop");
    svc.set_ttl(ROOT, "dev", Some(5), None).await.expect("set");
    bed.world.advance_clock(5);
    assert_eq!(svc.expire_due().await, ["dev"]);
    assert!(bed.vm_names().is_empty());
    assert!(bed.leaks().is_empty(), "{:?}", bed.leaks());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_made_again_under_a_due_name_is_not_deleted_with_the_old_one() {
    let bed = Arc::new(Bed::new());
    let svc = bed.daemon();
    let mut s = spec("work", false);
    s.ttl_secs = Some(5);
    svc.create_with(s, ALICE, None).await.expect("create");
    bed.world.advance_clock(6);
    let now = svc.host.clock.now();
    let due = svc.due(now);
    assert_eq!(due.len(), 1);
    // While housekeeping deletes other VMs first, the owner deletes "work"
    // and makes a new one, with a lifetime of its own or none.
    svc.delete(ALICE, "work", true, None).await.expect("delete");
    svc.create_with(spec("work", false), ALICE, None)
        .await
        .expect("create again");
    assert!(
        svc.expire(due, now).await.is_empty(),
        "the new VM is not due"
    );
    assert!(bed.vm_names().contains("work"));
    assert!(bed.leaks().is_empty(), "{:?}", bed.leaks());
}

fn with_repo(name: &str, repo: &std::path::Path) -> banger_api::VmSpec {
    let mut s = spec(name, false);
    s.workspace = Some(WorkspaceSpec {
        repo: repo.display().to_string(),
        mode: "overlay".into(),
        readonly: true,
        include_ignored: false,
    });
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_with_a_repo_prepares_it_or_leaves_no_vm() {
    let bed = Arc::new(Bed::new());
    let svc = bed.daemon();
    let info = svc
        .create_with(with_repo("ok", &bed.repo), ROOT, None)
        .await
        .expect("create with a repo");
    let ws = info.workspace.expect("the workspace");
    assert_eq!((ws.mode.as_str(), ws.readonly), ("overlay", true));
    assert_eq!(svc.record("ok").unwrap().workspace, Some(ws));

    // Not a git repo: refused before any VM or host call.
    let not_repo = bed.repo.join(".git/objects");
    let plain = tempfile::tempdir().expect("tempdir");
    bed.world.reset_calls();
    for (path, what) in [
        (plain.path(), "not a git repository"),
        (not_repo.as_path(), ""),
    ] {
        let e = svc
            .create_with(with_repo("bad", path), ROOT, None)
            .await
            .unwrap_err();
        let e = ApiError::from(e);
        assert!(e.message.contains(what), "{}", e.message);
    }
    let mut relative = with_repo("bad", &bed.repo);
    relative.workspace.as_mut().unwrap().repo = "repo".into();
    let e = svc.create_with(relative, ROOT, None).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::InvalidArgument);
    let mut mode = with_repo("bad", &bed.repo);
    mode.workspace.as_mut().unwrap().mode = "copy".into();
    let e = svc.create_with(mode, ROOT, None).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::InvalidArgument);
    assert!(bed.world.calls().is_empty(), "{:?}", bed.world.calls());
    assert!(!bed.vm_names().contains("bad"));

    // The prepare fails in the guest, after the boot: the VM goes.
    bed.world.reset_calls();
    svc.create_with(with_repo("probe", &bed.repo), ROOT, None)
        .await
        .expect("create");
    let first_script = bed
        .world
        .calls()
        .iter()
        .position(|c| c == "guest.exec sh")
        .expect("a workspace script ran");
    svc.delete(ROOT, "probe", true, None).await.expect("delete");
    bed.world.reset_calls();
    bed.world.arm(first_script, FaultKind::Fail);
    let e = svc
        .create_with(with_repo("late", &bed.repo), ROOT, None)
        .await
        .unwrap_err();
    bed.world.disarm();
    assert!(e.to_string().contains("the VM was deleted"), "{e}");
    assert_eq!(bed.vm_names().into_iter().collect::<Vec<_>>(), ["ok"]);
    assert!(bed.leaks().is_empty(), "{:?}", bed.leaks());
    // The name is free again.
    svc.create_with(with_repo("late", &bed.repo), ROOT, None)
        .await
        .expect("create again");
}
