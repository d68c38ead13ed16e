//! Restoring from templates on the fake host (a VMM that saves and
//! restores): the first
//! cold create builds one in the background, the next VM of the shape is
//! restored and given its identity, `--cold` and other shapes boot cold, a
//! restore that fails boots the VM cold and drops the template, and a new
//! image version retires the old template once no VM is made over it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bed::{spec, Bed};
use crate::host::fake::FaultKind;
use crate::image::{catalog, DEFAULT_IMAGE};
use crate::template;
use crate::vm::{Caller, VmService};

const ROOT: Caller = Caller::ROOT;

fn bed() -> Arc<Bed> {
    let bed = Arc::new(Bed::new());
    bed.world.enable_templates();
    bed
}

/// Waits (up to 10 s) until `n` templates are on disk and no build runs.
async fn templates(svc: &VmService, n: usize) -> Vec<template::Template> {
    let start = Instant::now();
    loop {
        let all = template::list(svc.layout());
        let idle = svc.templates_wanted.lock().expect("lock").is_empty();
        if all.len() == n && idle {
            return all;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} templates, want {n}",
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_cold_create_builds_a_template_and_the_next_vm_is_restored() {
    let bed = bed();
    let svc = bed.daemon();
    let a = svc.create(spec("a", false), ROOT, None).await.expect("a");
    assert_eq!(a.template, None, "no template yet: a cold boot");
    let built = templates(&svc, 1).await;
    let t = &built[0];
    assert!(t.disk().is_file() && t.state().is_dir());
    assert!(
        !bed.leaks().iter().any(|l| l.contains(".tpl-")),
        "the template's VMM must be gone: {:?}",
        bed.leaks()
    );

    let b = svc.create(spec("b", false), ROOT, None).await.expect("b");
    assert_eq!(b.template.as_deref(), Some(t.id.as_str()));
    let runs = bed.world.agent_runs();
    let last = runs.last().expect("the restored VM's identity step");
    assert_eq!(last.path, "/usr/local/sbin/banger-guest-init");
    assert_eq!(last.args, ["--restored"]);
    // b's own address and host key (the one pinned for it), not a's.
    assert!(
        last.env.contains(&format!("BANGER_IP={}", b.ip)),
        "{last:?}"
    );
    assert!(
        last.env.contains(&"BANGER_HOSTNAME=b".to_string()),
        "{last:?}"
    );
    let pinned = std::fs::read_to_string(svc.layout().vm_host_key(&b.name)).expect("b's key");
    let stdin = String::from_utf8(last.stdin.clone()).expect("text");
    let (seed, key) = stdin.split_once('\n').expect("seed line");
    assert_eq!(seed.len(), 64, "a 32-byte seed in hex: {stdin:?}");
    assert_eq!(key, pinned);
    let record = svc.record("b").expect("b");
    assert_eq!(record.disk_base(svc.layout()), t.disk());

    // --cold, and another shape, boot cold; the other shape gets its own.
    let mut cold = spec("c", false);
    cold.cold = true;
    let c = svc.create(cold, ROOT, None).await.expect("c");
    assert_eq!(c.template, None);
    let mut big = spec("d", false);
    big.memory_mib = 2048;
    assert_eq!(svc.create(big, ROOT, None).await.expect("d").template, None);
    templates(&svc, 2).await;

    for vm in ["a", "b", "c", "d"] {
        svc.delete(ROOT, vm, true, None).await.expect("delete");
    }
    // Still current, and usable: they stay for the next VMs.
    assert_eq!(template::list(svc.layout()).len(), 2);
    assert!(bed.leaks().is_empty(), "{:?}", bed.leaks());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_fails_boots_cold_and_drops_the_template() {
    let bed = bed();
    let svc = bed.daemon();
    svc.create(spec("a", false), ROOT, None).await.expect("a");
    let t = templates(&svc, 1).await.remove(0);
    bed.world.reset_calls();
    let next = {
        // Count the host calls of a restored create, then fail its agent call.
        let c = svc
            .create(spec("probe", false), ROOT, None)
            .await
            .expect("probe");
        assert!(c.template.is_some());
        let calls = bed.world.calls();
        svc.delete(ROOT, "probe", true, None).await.expect("delete");
        calls
            .iter()
            .position(|c| c == "vmm.agent_exec")
            .expect("agent call")
    };
    bed.world.reset_calls();
    bed.world.arm(next, FaultKind::Fail);
    let c = svc
        .create(spec("c", false), ROOT, None)
        .await
        .expect("c boots cold");
    bed.world.disarm();
    assert_eq!(c.template, None, "fell back to a cold boot");
    assert_eq!(svc.record("c").expect("c").template, None);
    assert!(
        !t.dir.exists(),
        "the broken template is removed (no VM is made over it)"
    );
    // The cold boot starts a new template of the shape.
    let fresh = templates(&svc, 1).await;
    assert_ne!(fresh[0].id, t.id);
    svc.delete(ROOT, "a", true, None).await.expect("delete a");
    svc.delete(ROOT, "c", true, None).await.expect("delete c");
    assert!(bed.leaks().is_empty(), "{:?}", bed.leaks());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_image_version_retires_the_old_template_once_unused() {
    let bed = bed();
    let svc = bed.daemon();
    svc.create(spec("a", false), ROOT, None).await.expect("a");
    let old = templates(&svc, 1).await.remove(0);
    let b = svc.create(spec("b", false), ROOT, None).await.expect("b");
    assert_eq!(b.template.as_deref(), Some(old.id.as_str()));

    // A new version of the image: new VMs boot cold on it and build theirs.
    {
        let _building = svc.image_lock.lock().await;
        let fake = catalog::fake_build("v2");
        svc.install_image_locked(DEFAULT_IMAGE, move |l| {
            catalog::install(l, DEFAULT_IMAGE, fake)
        })
        .await
        .expect("build v2");
    }
    let c = svc.create(spec("c", false), ROOT, None).await.expect("c");
    assert_eq!(c.template, None, "no template of the new version yet");
    templates(&svc, 2).await;
    assert!(old.dir.exists(), "b is made over the old template");

    svc.delete(ROOT, "b", true, None).await.expect("delete b");
    svc.delete(ROOT, "a", true, None).await.expect("delete a");
    let left = template::list(svc.layout());
    assert_eq!(left.len(), 1, "{left:?}");
    assert_ne!(left[0].id, old.id, "the old version's template is gone");
    svc.delete(ROOT, "c", true, None).await.expect("delete c");
    assert!(bed.leaks().is_empty(), "{:?}", bed.leaks());
}
