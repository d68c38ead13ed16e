//! Callers: a non-root caller sees and acts on its own VMs only; root on
//! all; shared resources (images) are root's.

use std::sync::Arc;

use banger_api::{ApiError, ErrorCode};

use super::bed::{spec, Bed};
use crate::vm::{Caller, VmError};

const ALICE: Caller = Caller {
    uid: 1000,
    gid: 1000,
};
const BOB: Caller = Caller {
    uid: 2000,
    gid: 2000,
};

fn code(e: VmError) -> ErrorCode {
    ApiError::from(e).code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_vm_does_not_exist_for_you() {
    let bed = Arc::new(Bed::new());
    let svc = bed.daemon();
    let vm = svc
        .create(spec("alices", false), ALICE, None)
        .await
        .expect("create");
    assert_eq!(svc.record("alices").expect("row").owner_uid, ALICE.uid);
    assert_eq!(svc.list(ALICE).await.expect("list").len(), 1);
    assert!(svc.list(BOB).await.expect("list").is_empty());
    assert_eq!(svc.list(Caller::ROOT).await.expect("list")[0].name, vm.name);
    let not_found = [
        svc.show(BOB, "alices").await.map(drop),
        svc.stop(BOB, "alices", None).await.map(drop),
        svc.kill(BOB, "alices", "KILL", None).await.map(drop),
        svc.delete(BOB, "alices", true, None).await,
        svc.ssh_info(BOB, "alices").await.map(drop),
        svc.console_log_read(BOB, "alices", 0).map(drop),
        svc.workspace_export(BOB, "alices", None, None)
            .await
            .map(drop),
    ];
    for r in not_found {
        assert_eq!(code(r.expect_err("refused")), ErrorCode::NotFound);
    }
    assert!(svc.prune(BOB, false, None).await.expect("prune").is_empty());
    assert!(svc.known_hosts(BOB).expect("known hosts").is_empty());
    let alices = svc.known_hosts(ALICE).expect("known hosts");
    assert_eq!(alices.len(), 1);
    assert!(alices[0].contains("alices.vm ssh-ed25519"), "{alices:?}");
    assert!(
        svc.ops_list(BOB).expect("ops").is_empty(),
        "Bob sees Alice's operations"
    );
    assert!(!svc.ops_list(ALICE).expect("ops").is_empty());
    // Nothing Bob did touched it.
    assert!(svc.show(ALICE, "alices").await.is_ok());
    svc.delete(Caller::ROOT, "alices", true, None)
        .await
        .expect("root deletes any VM");
}

#[tokio::test]
async fn images_are_roots_to_change() {
    let bed = Arc::new(Bed::new());
    let svc = bed.daemon();
    let e = svc
        .image_build(ALICE, "mine", Default::default(), None)
        .await
        .expect_err("refused");
    assert_eq!(code(e), ErrorCode::Forbidden);
    let e = svc.image_rm(ALICE, "default").expect_err("refused");
    assert_eq!(code(e), ErrorCode::Forbidden);
    assert_eq!(
        svc.image_list(Caller::ROOT).expect("list").len(),
        1,
        "the image is still there"
    );
}
