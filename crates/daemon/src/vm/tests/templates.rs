//! Templates on the fake host: a cold create builds one in the background,
//! the next create of the shape restores from it; a restore that fails
//! because of the template marks it broken and boots cold, one that fails
//! for another reason keeps it; a template never serves an image that was
//! removed and rebuilt under the same version number; and nothing leaks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bed::{spec, Bed};
use crate::host::fake::{FaultKind, SimulatedCrash};
use crate::image::{catalog, DEFAULT_IMAGE};
use crate::template;
use crate::vm::{Caller, VmService};

const ROOT: Caller = Caller::ROOT;

/// A bed whose VMM saves and restores VMs, on an image with the agent.
fn bed() -> Bed {
    let bed = Bed::new();
    bed.world.enable_templates();
    with_agent(&bed);
    bed
}

/// Marks the current default image as having the guest agent.
fn with_agent(bed: &Bed) {
    let l = &bed.cfg.layout;
    let v = catalog::current(l, DEFAULT_IMAGE).expect("an image");
    let manifest = l.image_version(DEFAULT_IMAGE, v).manifest();
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).expect("manifest")).expect("json");
    m["guest_agent"] = true.into();
    m["restore_protocol"] = crate::guest::restore::PROTOCOL.into();
    std::fs::write(&manifest, m.to_string()).expect("manifest");
}

/// Waits until `n` templates are complete (the build is in the background).
async fn templates(bed: &Bed, n: usize) -> Vec<template::Template> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = template::list(&bed.cfg.layout);
        if all.len() == n || Instant::now() > deadline {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until no template build is queued or runs (a build after a cold
/// create is in the background, and collects templates when it ends).
async fn settle(svc: &VmService, bed: &Bed) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let building = || {
        !svc.templates_wanted.lock().unwrap().is_empty()
            || bed
                .world
                .live_procs()
                .values()
                .any(|p| p.name.starts_with(".tpl-"))
    };
    while building() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A cold create, then the template of its shape, built.
async fn with_template(bed: &Bed, svc: &Arc<VmService>) -> template::Template {
    svc.create(spec("first", false), ROOT, None)
        .await
        .expect("cold create");
    let all = templates(bed, 1).await;
    assert_eq!(all.len(), 1, "the cold create built no template");
    all[0].clone()
}

fn template_of(svc: &VmService, name: &str) -> Option<String> {
    svc.record(name).expect("record").template
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_create_of_a_shape_is_restored_from_its_template() {
    let bed = bed();
    let svc = bed.daemon();
    let t = with_template(&bed, &svc).await;
    assert_eq!(template_of(&svc, "first"), None);
    svc.create(spec("second", false), ROOT, None)
        .await
        .expect("restored create");
    assert_eq!(template_of(&svc, "second"), Some(t.id.clone()));
    // The template's build left nothing of its VMM or its secrets.
    assert!(!t.dir.join("host_key").exists() && !t.dir.join("config.img").exists());
    assert!(bed.leaks().is_empty(), "{:?}", bed.leaks());
    svc.delete(ROOT, "second", true, None)
        .await
        .expect("delete");
    svc.delete(ROOT, "first", true, None).await.expect("delete");
    assert!(bed.leaks().is_empty(), "{:?}", bed.leaks());
}

/// A restore whose saved state does not load marks the template broken
/// (it goes), and the VM boots cold on a disk over the image: running,
/// nothing leaked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_that_does_not_load_breaks_the_template_and_the_vm_boots_cold() {
    let bed = bed();
    let svc = bed.daemon();
    let t = with_template(&bed, &svc).await;
    std::fs::remove_dir_all(t.state()).expect("spoil the state");
    std::fs::create_dir(t.state()).expect("state dir");
    svc.create(spec("second", false), ROOT, None)
        .await
        .expect("create falls back to a cold boot");
    assert_eq!(template_of(&svc, "second"), None);
    let disk = bed
        .cfg
        .layout
        .vm_disk("second", svc.record("second").unwrap().disk);
    let over = std::fs::read_to_string(disk).expect("disk");
    assert!(
        !over.contains("templates"),
        "still over the template: {over}"
    );
    assert!(!t.dir.exists(), "the broken template stayed");
    settle(&svc, &bed).await;
    assert!(bed.leaks().is_empty(), "{:?}", bed.leaks());
}

/// A host failure on the way (here: the tap) is no fault of the template:
/// the VM still comes up (cold), and the template stays for the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_failure_during_a_restore_keeps_the_template() {
    let bed = bed();
    let svc = bed.daemon();
    let t = with_template(&bed, &svc).await;
    bed.world.reset_calls();
    // The first point of the restored create that creates the tap.
    let tap = probe_point(&bed, &svc, "net.ensure_tap").await;
    bed.world.reset_calls();
    bed.world.arm(tap, FaultKind::Fail);
    svc.create(spec("third", false), ROOT, None)
        .await
        .expect("create falls back to a cold boot");
    assert!(
        template::list(&bed.cfg.layout).iter().any(|x| x.id == t.id)
            && !t.dir.join(template::BROKEN).exists(),
        "a failed tap broke the template"
    );
    svc.create(spec("fourth", false), ROOT, None)
        .await
        .expect("restored create");
    assert_eq!(template_of(&svc, "fourth"), Some(t.id.clone()));
    settle(&svc, &bed).await;
    assert!(bed.leaks().is_empty(), "{:?}", bed.leaks());
}

/// Runs a restored create of a throwaway VM and returns the index of the
/// first call to `point` in it; the VM is deleted again.
async fn probe_point(bed: &Bed, svc: &Arc<VmService>, point: &str) -> usize {
    svc.create(spec("probe", false), ROOT, None)
        .await
        .expect("probe create");
    assert!(
        template_of(svc, "probe").is_some(),
        "probe was not restored"
    );
    let at = bed
        .world
        .calls()
        .iter()
        .position(|c| c == point)
        .expect("point reached");
    svc.delete(ROOT, "probe", true, None).await.expect("delete");
    at
}

/// `image rm` and a rebuild give the new image the old version number. A
/// template of the old image (here: one whose build finished after the
/// `image rm`) must not serve the new one: its disk names the image's
/// root filesystem by path, and its memory holds the old filesystem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_never_serves_an_image_rebuilt_under_its_version() {
    let bed = bed();
    let svc = bed.daemon();
    let t = with_template(&bed, &svc).await;
    svc.delete(ROOT, "first", true, None).await.expect("delete");
    // The build that outlives the image: its result, put back afterwards.
    let aside = bed.cfg.layout.state_dir.join("aside");
    copy_dir(&t.dir, &aside);
    svc.image_rm(ROOT, DEFAULT_IMAGE).expect("image rm");
    catalog::install(&bed.cfg.layout, DEFAULT_IMAGE, catalog::fake_build("new")).expect("rebuild");
    with_agent(&bed);
    assert_eq!(catalog::current(&bed.cfg.layout, DEFAULT_IMAGE), Some(1));
    copy_dir(&aside, &t.dir);
    svc.create(spec("fresh", false), ROOT, None)
        .await
        .expect("create");
    assert_eq!(
        template_of(&svc, "fresh"),
        None,
        "restored from a template of the removed image"
    );
    // And it goes when templates are collected (at a daemon start, too).
    settle(&svc, &bed).await;
    svc.collect_templates();
    assert!(!t.dir.exists(), "the stale template stayed");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("dir");
    for e in std::fs::read_dir(from).expect("read").flatten() {
        let dest = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).expect("copy");
        }
    }
}

/// Every host call of a restored create, made to fail in turn: the create
/// either comes up (cold, when the restore failed) or leaves no VM, nothing
/// leaks, and the template is marked broken only when the failure was its
/// own (its state did not load, or the restored guest did not take its
/// identity through the agent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_in_a_restored_create_blames_the_template_only_for_its_own() {
    let bed = bed();
    let svc = bed.daemon();
    with_template(&bed, &svc).await;
    bed.world.reset_calls();
    svc.create(spec("probe", false), ROOT, None)
        .await
        .expect("probe create");
    let points = bed.world.calls();
    svc.delete(ROOT, "probe", true, None).await.expect("delete");
    for (i, point) in points.iter().enumerate() {
        let before = templates(&bed, 1).await;
        assert_eq!(before.len(), 1, "no template before point {i} ({point})");
        bed.world.reset_calls();
        bed.world.arm(i, FaultKind::Fail);
        let made = svc.create(spec("x", false), ROOT, None).await;
        bed.world.disarm();
        let own = point.starts_with("vmm.restore") || point == "vmm.agent_exec";
        let kept = before[0].dir.exists() && !before[0].dir.join(template::BROKEN).exists();
        assert_eq!(kept, !own, "point {i} ({point}): template kept {kept}");
        if let Ok(info) = &made {
            assert_eq!(
                info.state,
                banger_api::VmState::Running,
                "point {i} ({point})"
            );
        } else {
            assert!(
                !bed.vm_names().contains("x"),
                "point {i} ({point}): a VM stayed"
            );
        }
        settle(&svc, &bed).await;
        assert!(
            bed.leaks().is_empty(),
            "point {i} ({point}): {:?}",
            bed.leaks()
        );
        if made.is_ok() {
            svc.delete(ROOT, "x", true, None).await.expect("delete");
        }
        // A broken template goes; the cold create builds the next one.
        templates(&bed, 1).await;
        settle(&svc, &bed).await;
    }
}

/// The daemon dies in each host call of a restored create: a restarted
/// daemon leaves nothing leaked, the VM gone or deletable, and the
/// template usable (a crash is no fault of the template's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_a_restored_create_leaves_the_template_usable() {
    let bed = Arc::new(bed());
    let svc = bed.daemon();
    let t = with_template(&bed, &svc).await;
    svc.delete(ROOT, "first", true, None).await.expect("delete");
    bed.world.reset_calls();
    svc.create(spec("probe", false), ROOT, None)
        .await
        .expect("probe create");
    let points = bed.world.calls();
    svc.delete(ROOT, "probe", true, None).await.expect("delete");
    quiet_crashes();
    for (i, point) in points.iter().enumerate() {
        bed.world.reset_calls();
        bed.world.arm(i, FaultKind::Crash);
        let dying = bed.daemon();
        let run = tokio::spawn(async move { dying.create(spec("x", false), ROOT, None).await });
        assert!(run.await.is_err(), "point {i} ({point}): no crash");
        let svc = bed.daemon();
        crate::vm::reconcile::reconcile(&svc).await;
        assert!(
            bed.leaks().is_empty(),
            "point {i} ({point}): {:?}",
            bed.leaks()
        );
        if bed.vm_names().contains("x") {
            svc.delete(ROOT, "x", true, None)
                .await
                .unwrap_or_else(|e| panic!("point {i} ({point}): delete: {e}"));
        }
        assert!(
            bed.leaks().is_empty(),
            "point {i} ({point}): {:?}",
            bed.leaks()
        );
        let found = template::list(&bed.cfg.layout);
        assert!(
            found.iter().any(|x| x.id == t.id) && !t.dir.join(template::BROKEN).exists(),
            "point {i} ({point}): the template went"
        );
    }
    svc.create(spec("after", false), ROOT, None)
        .await
        .expect("restored create");
    assert_eq!(template_of(&svc, "after"), Some(t.id));
}

/// Keeps simulated crashes out of the test output; real panics still print.
fn quiet_crashes() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<SimulatedCrash>().is_none() {
                default(info);
            }
        }));
    });
}

/// Every cold create of a new shape asks for a template build: a user who
/// may create VMs must not be able to queue builds (each boots a VM) or
/// keep templates (each holds a guest's memory on disk) without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_builds_and_idle_templates_are_bounded() {
    let bed = bed();
    let svc = bed.daemon();
    let shapes = 2 * (template::MAX_IDLE + crate::vm::template::MAX_QUEUE);
    {
        // Builds wait while one runs: hold the build lock for a while.
        let _running = svc.template_lock.lock().await;
        for i in 0..shapes {
            let mut s = spec(&format!("v{i}"), false);
            s.memory_mib = 512 + 16 * i as u32;
            svc.create(s, ROOT, None).await.expect("cold create");
        }
        let queued = svc.templates_wanted.lock().unwrap().len();
        assert!(
            queued <= crate::vm::template::MAX_QUEUE,
            "{queued} template builds queued"
        );
    }
    settle(&svc, &bed).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    settle(&svc, &bed).await;
    // Delete every VM (so no template is in use) and make templates of
    // more shapes than are kept idle, one after the other.
    for i in 0..shapes {
        svc.delete(ROOT, &format!("v{i}"), true, None)
            .await
            .expect("delete");
    }
    for i in 0..shapes {
        let mut s = spec(&format!("w{i}"), false);
        s.memory_mib = 1024 + 16 * i as u32;
        svc.create(s, ROOT, None).await.expect("cold create");
        settle(&svc, &bed).await;
        svc.delete(ROOT, &format!("w{i}"), true, None)
            .await
            .expect("delete");
    }
    settle(&svc, &bed).await;
    svc.collect_templates();
    let kept = template::list(&bed.cfg.layout).len();
    assert!(kept <= template::MAX_IDLE, "{kept} idle templates kept");
    assert!(bed.leaks().is_empty(), "{:?}", bed.leaks());
}

/// A build that dies half way (a bug, here a simulated crash in the
/// snapshot) must not leave its shape marked as being built: the next
/// cold create of the shape builds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_that_dies_does_not_block_the_next_build_of_its_shape() {
    quiet_crashes();
    let bed = bed();
    let svc = bed.daemon();
    bed.world.reset_calls();
    let t = with_template(&bed, &svc).await;
    let snapshot = bed
        .world
        .calls()
        .iter()
        .position(|c| c == "vmm.snapshot")
        .expect("the build saved the template");
    svc.delete(ROOT, "first", true, None).await.expect("delete");
    std::fs::remove_dir_all(&t.dir).expect("remove the template");

    let bed = self::bed();
    let svc = bed.daemon();
    bed.world.reset_calls();
    bed.world.arm(snapshot, FaultKind::Crash);
    svc.create(spec("first", false), ROOT, None)
        .await
        .expect("cold create");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !svc.templates_wanted.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        svc.templates_wanted.lock().unwrap().is_empty(),
        "the dead build still counts as running"
    );
    svc.create(spec("second", false), ROOT, None)
        .await
        .expect("cold create");
    assert_eq!(templates(&bed, 1).await.len(), 1, "no template was built");
}
