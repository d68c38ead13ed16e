//! `vm cp` on the fake host: an upload reaches the guest whole and in
//! order and is placed only once complete; a failed upload is cleaned up;
//! a copy out streams; bad input and other users' VMs are refused before
//! anything reaches a guest.

use std::sync::Arc;

use banger_api::{ApiError, ErrorCode, Event};

use super::bed::{spec, Bed};
use crate::vm::copy::{CpIn, Frames};
use crate::vm::{Caller, VmError};

const ROOT: Caller = Caller::ROOT;
const BOB: Caller = Caller {
    uid: 2000,
    gid: 2000,
};

fn req(dest: &str) -> CpIn {
    CpIn {
        vm: "cp1".into(),
        dest: dest.into(),
        source_name: "tree".into(),
        source_is_dir: true,
        contents: false,
    }
}

/// Frames carrying `chunks`, then (when `fail`) an upload error.
fn frames(chunks: &[&[u8]], fail: Option<&str>) -> Frames {
    let (tx, rx) = tokio::sync::mpsc::channel(chunks.len() + 1);
    for c in chunks {
        tx.try_send(Ok(c.to_vec())).expect("room");
    }
    if let Some(e) = fail {
        tx.try_send(Err(e.to_string())).expect("room");
    }
    rx
}

fn code(e: VmError) -> ErrorCode {
    ApiError::from(e).code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_reaches_the_guest_whole_then_is_placed() {
    let bed = Arc::new(Bed::new());
    let svc = bed.daemon();
    svc.create(spec("cp1", false), ROOT, None)
        .await
        .expect("create");
    bed.world.reset_calls();
    let (path, bytes) = svc
        .cp_in(
            ROOT,
            req("/root/new"),
            frames(&[b"abc", b"defg"], None),
            None,
        )
        .await
        .expect("copied");
    assert_eq!((path.as_str(), bytes), ("/root/new", 7));
    assert_eq!(bed.world.fed(), b"abcdefg");
    let calls = bed.world.calls();
    assert_eq!(calls, ["guest.exec_feed sh", "guest.exec sh"], "{calls:?}");
    let ops = svc.ops_list(ROOT).expect("ops");
    assert_eq!(ops[0].kind, "vm_cp_in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_upload_is_not_placed_and_its_staging_is_removed() {
    let bed = Arc::new(Bed::new());
    let svc = bed.daemon();
    svc.create(spec("cp1", false), ROOT, None)
        .await
        .expect("create");
    bed.world.reset_calls();
    let e = svc
        .cp_in(
            ROOT,
            req("/root/new"),
            frames(&[b"abc"], Some("the client closed the connection")),
            None,
        )
        .await
        .expect_err("failed");
    assert!(
        e.to_string().contains("the client closed the connection"),
        "{e}"
    );
    // Fed, then one cleanup command; no placing step.
    assert_eq!(bed.world.calls(), ["guest.exec_feed sh", "guest.exec sh"]);
    assert!(bed.leaks().is_empty(), "{:?}", bed.leaks());
    // The VM is still usable.
    svc.cp_in(ROOT, req("/root/new"), frames(&[b"x"], None), None)
        .await
        .expect("a retry works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_other_users_vms_are_refused_before_the_guest() {
    let bed = Arc::new(Bed::new());
    let svc = bed.daemon();
    svc.create(spec("cp1", false), ROOT, None)
        .await
        .expect("create");
    bed.world.reset_calls();
    let mut bad_name = req("/root");
    bad_name.source_name = "..".into();
    let refused = [
        svc.cp_in(ROOT, req(""), frames(&[], None), None)
            .await
            .map(drop),
        svc.cp_in(ROOT, bad_name, frames(&[], None), None)
            .await
            .map(drop),
        svc.cp_out(ROOT, "cp1", "/", false, None).await.map(drop),
        svc.cp_out(ROOT, "cp1", "/root/..", false, None)
            .await
            .map(drop),
    ];
    for r in refused {
        assert_eq!(code(r.expect_err("refused")), ErrorCode::InvalidArgument);
    }
    let e = svc
        .cp_out(BOB, "cp1", "/etc", false, None)
        .await
        .expect_err("hidden");
    assert_eq!(code(e), ErrorCode::NotFound);
    let e = svc
        .cp_in(BOB, req("/root"), frames(&[b"x"], None), None)
        .await
        .expect_err("hidden");
    assert_eq!(code(e), ErrorCode::NotFound);
    assert!(bed.world.calls().is_empty(), "{:?}", bed.world.calls());
    svc.stop(ROOT, "cp1", None).await.expect("stop");
    let e = svc
        .cp_out(ROOT, "cp1", "/etc", false, None)
        .await
        .expect_err("stopped");
    assert!(e.to_string().contains("banger vm start cp1"), "{e}");
    assert_eq!(code(e), ErrorCode::InvalidState);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_out_streams_as_data_events() {
    let bed = Arc::new(Bed::new());
    let svc = bed.daemon();
    svc.create(spec("cp1", false), ROOT, None)
        .await
        .expect("create");
    let (tx, mut rx) = tokio::sync::mpsc::channel(crate::opstate::SINK_DEPTH);
    let collect = tokio::spawn(async move {
        let mut data = Vec::new();
        while let Some(ev) = rx.recv().await {
            if let Event::Data(b64) = ev {
                use base64::Engine;
                data.extend(
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .expect("base64"),
                );
            }
        }
        data
    });
    let bytes = svc
        .cp_out(ROOT, "cp1", "/root/tree/", false, Some(tx))
        .await
        .expect("copied");
    let data = collect.await.expect("collector");
    assert_eq!(bytes, data.len() as u64);
    assert!(!data.is_empty());
}
