//! Image versions on the fake host: each build is a new version, a VM
//! keeps (and boots from) the version it was made from until it is
//! deleted, a superseded version goes with its last VM, `image rm` refuses
//! while any version is used; and a state directory from before versions
//! keeps working.

use std::path::PathBuf;
use std::sync::Arc;

use banger_api::{ApiError, ErrorCode, ImageInfo};

use super::bed::{spec, Bed};
use crate::image::{catalog, DEFAULT_IMAGE};
use crate::layout::LEGACY_IMAGE_VERSION;
use crate::vm::{reconcile, Caller, VmError, VmService};

const ROOT: Caller = Caller::ROOT;
const ALICE: Caller = Caller {
    uid: 1000,
    gid: 1000,
};

/// `image build` with fake files: the service's install path, with the
/// catalog's install, as the real build takes them.
async fn build(svc: &Arc<VmService>, tag: &str) -> Result<u32, VmError> {
    let _building = svc.image_lock.lock().await;
    let fake = catalog::fake_build(tag);
    svc.install_image_locked(DEFAULT_IMAGE, move |l| {
        catalog::install(l, DEFAULT_IMAGE, fake)
    })
    .await
}

/// (version, current, users) of each listed version of the default image.
fn listed(svc: &VmService, caller: Caller) -> Vec<(u32, bool, Vec<String>)> {
    svc.image_list(caller)
        .expect("list")
        .into_iter()
        .filter(|i: &ImageInfo| i.name == DEFAULT_IMAGE)
        .map(|i| (i.version, i.current, i.used_by))
        .collect()
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

struct Seen {
    version: u32,
    /// What the root disk was made over (the fake disk says it).
    disk_over: String,
    /// The kernel its VMM booted.
    kernel: PathBuf,
}

fn seen(bed: &Bed, svc: &VmService, name: &str) -> Seen {
    let vm = svc.record(name).expect("record");
    let disk = bed.cfg.layout.vm_disk(name, vm.disk);
    let disk_over = std::fs::read_to_string(&disk).expect("disk");
    let kernel = bed
        .world
        .live_procs()
        .into_values()
        .find(|p| p.name == name)
        .map(|p| p.kernel)
        .unwrap_or_default();
    Seen {
        version: vm.image_version,
        disk_over,
        kernel,
    }
}

fn code(e: VmError) -> (ErrorCode, String) {
    let e = ApiError::from(e);
    (e.code, e.message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_leaves_each_vm_on_its_version_until_it_is_deleted() {
    let bed = Arc::new(Bed::new());
    let svc = bed.daemon();
    let l = bed.cfg.layout.clone();
    let v1 = l.image_version(DEFAULT_IMAGE, 1);
    let v2 = l.image_version(DEFAULT_IMAGE, 2);
    svc.create(spec("old", false), ROOT, None)
        .await
        .expect("create old");
    let old = seen(&bed, &svc, "old");
    assert_eq!(old.version, 1);
    assert_eq!(
        old.disk_over,
        format!("disk over {}", v1.rootfs().display())
    );
    assert_eq!(old.kernel, v1.kernel());

    assert_eq!(build(&svc, "v2").await.expect("build"), 2);
    assert_eq!(catalog::current(&l, DEFAULT_IMAGE), Some(2));
    assert_eq!(
        std::fs::read_to_string(v1.rootfs()).expect("v1 is kept"),
        "v1",
        "the old VM's base changed"
    );
    // The old VM boots from its version again, also after a daemon restart.
    svc.restart(ROOT, "old", None).await.expect("restart");
    assert_eq!(seen(&bed, &svc, "old").kernel, v1.kernel());
    let svc = bed.daemon();
    reconcile::reconcile(&svc).await;
    assert!(v1.exists(), "reconcile removed a version in use");
    svc.stop(ROOT, "old", None).await.expect("stop");
    svc.start(ROOT, "old", None).await.expect("start");
    let again = seen(&bed, &svc, "old");
    assert_eq!((again.version, again.kernel), (1, v1.kernel()));

    // A new VM gets the new version.
    svc.create(spec("new", false), ROOT, None)
        .await
        .expect("create new");
    let new = seen(&bed, &svc, "new");
    assert_eq!(new.version, 2);
    assert_eq!(
        new.disk_over,
        format!("disk over {}", v2.rootfs().display())
    );
    assert_eq!(new.kernel, v2.kernel());
    assert_eq!(svc.show(ROOT, "new").await.expect("show").image_version, 2);

    assert_eq!(
        listed(&svc, ROOT),
        [(2, true, names(&["new"])), (1, false, names(&["old"]))]
    );
    // Another user sees the versions, not root's VMs.
    assert_eq!(listed(&svc, ALICE), [(2, true, vec![]), (1, false, vec![])]);
    let info = &svc.image_list(ROOT).expect("list")[1];
    assert_eq!(
        (info.path.as_str(), info.kernel.as_str()),
        (v1.dir.to_str().expect("utf-8"), "v1")
    );

    let (c, msg) = code(svc.image_rm(ROOT, DEFAULT_IMAGE).expect_err("in use"));
    assert_eq!(c, ErrorCode::InvalidState, "{msg}");
    assert!(
        msg.contains("old (version 1)") && msg.contains("new (version 2)"),
        "{msg}"
    );

    // The last VM on the superseded version takes it along.
    svc.delete(ROOT, "old", true, None)
        .await
        .expect("delete old");
    assert!(!v1.dir.exists(), "version 1 outlived its last VM");
    assert_eq!(catalog::versions(&l, DEFAULT_IMAGE), [2]);
    assert_eq!(listed(&svc, ROOT), [(2, true, names(&["new"]))]);
    let (_, msg) = code(svc.image_rm(ROOT, DEFAULT_IMAGE).expect_err("in use"));
    assert!(
        msg.contains("new (version 2)") && !msg.contains("old"),
        "{msg}"
    );

    // The current version stays without VMs; `image rm` then takes it all.
    svc.delete(ROOT, "new", true, None)
        .await
        .expect("delete new");
    assert!(v2.exists());
    svc.image_rm(ROOT, DEFAULT_IMAGE).expect("rm");
    assert!(!l.image_root(DEFAULT_IMAGE).exists());
    assert!(svc.image_list(ROOT).expect("list").is_empty());
    assert!(bed.leaks().is_empty(), "{:?}", bed.leaks());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_rm_refuses_while_an_old_version_is_used() {
    let bed = Arc::new(Bed::new());
    let svc = bed.daemon();
    svc.create(spec("a", false), ROOT, None)
        .await
        .expect("create");
    build(&svc, "v2").await.expect("build");
    let (c, msg) = code(svc.image_rm(ROOT, DEFAULT_IMAGE).expect_err("in use"));
    assert_eq!(c, ErrorCode::InvalidState);
    assert!(msg.contains("a (version 1)"), "{msg}");
    let l = &bed.cfg.layout;
    assert_eq!(
        catalog::versions(l, DEFAULT_IMAGE),
        [1, 2],
        "rm removed some"
    );
    assert_eq!(catalog::current(l, DEFAULT_IMAGE), Some(2));
}

#[tokio::test]
async fn an_unused_version_goes_with_the_build_that_supersedes_it() {
    let bed = Bed::new();
    let svc = bed.daemon();
    let l = &bed.cfg.layout;
    assert_eq!(build(&svc, "v2").await.expect("build"), 2);
    assert_eq!(catalog::versions(l, DEFAULT_IMAGE), [2]);
    // A failed build leaves the current version as it was.
    let _building = svc.image_lock.lock().await;
    let failed = svc
        .install_image_locked(DEFAULT_IMAGE, |l| {
            catalog::install(l, DEFAULT_IMAGE, |out| {
                std::fs::write(out.rootfs(), "half").expect("write");
                Err(crate::image::ImageError::Invalid(
                    "mmdebstrap failed".into(),
                ))
            })
        })
        .await;
    assert!(failed.is_err());
    drop(_building);
    assert_eq!(catalog::current(l, DEFAULT_IMAGE), Some(2));
    assert_eq!(catalog::versions(l, DEFAULT_IMAGE), [2]);
    let v2 = l.image_version(DEFAULT_IMAGE, 2);
    assert_eq!(std::fs::read_to_string(v2.rootfs()).expect("rootfs"), "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_removes_what_a_crash_left_of_versions() {
    let bed = Arc::new(Bed::new());
    let svc = bed.daemon();
    let l = bed.cfg.layout.clone();
    svc.create(spec("a", false), ROOT, None)
        .await
        .expect("create a");
    svc.create(spec("b", false), ROOT, None)
        .await
        .expect("create b");
    build(&svc, "v2").await.expect("build");
    // The daemon died after deleting b's row, before removing what was
    // only b's (nothing: a still uses version 1), and after renaming
    // version 3 into place, before moving `current`.
    svc.store.delete_vm("b").expect("row");
    let v3 = l.image_version(DEFAULT_IMAGE, 3);
    std::fs::create_dir(&v3.dir).expect("v3");
    catalog::fake_build("v3")(&v3).expect("v3 files");
    std::fs::create_dir(l.image_staging(DEFAULT_IMAGE, 4)).expect("staging");
    // ... and then after deleting a's row too.
    svc.store.delete_vm("a").expect("row");
    let svc = bed.daemon();
    let report = reconcile::reconcile(&svc).await;
    let mut removed = report.removed_images.clone();
    removed.sort();
    assert_eq!(removed, ["default v1", "default v3"]);
    assert_eq!(catalog::versions(&l, DEFAULT_IMAGE), [2]);
    assert!(!l.image_staging(DEFAULT_IMAGE, 4).exists());
    assert_eq!(catalog::current(&l, DEFAULT_IMAGE), Some(2));
}

/// A state directory as banger left it before versions: the image's files
/// directly in `IMAGE_DIR/default/`, a database at schema version 2 whose
/// VM's disk is made over `IMAGE_DIR/default/rootfs.ext4`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_from_before_versions_keeps_working() {
    let bed = Arc::new(Bed::new());
    let l = bed.cfg.layout.clone();
    let root = l.image_root(DEFAULT_IMAGE);
    std::fs::remove_dir_all(&root).expect("new layout");
    std::fs::create_dir_all(&root).expect("old layout");
    let flat = crate::layout::ImagePaths::new(root.clone());
    catalog::fake_build("old")(&flat).expect("old image");
    let svc = bed.daemon();
    svc.create(spec("old", false), ROOT, None)
        .await
        .expect("create on the old layout");
    svc.stop(ROOT, "old", None).await.expect("stop");
    drop(svc);
    let db = rusqlite::Connection::open(l.database()).expect("db");
    db.execute_batch(
        "ALTER TABLE vms DROP COLUMN image_version; ALTER TABLE vms DROP COLUMN expires_at;
         ALTER TABLE vms DROP COLUMN template;
         PRAGMA user_version = 2;",
    )
    .expect("the schema before versions");
    drop(db);

    let svc = bed.daemon();
    reconcile::reconcile(&svc).await;
    let old = svc.record("old").expect("old");
    assert_eq!(old.image_version, LEGACY_IMAGE_VERSION);
    assert_eq!(old.image_files(&l).rootfs(), root.join("rootfs.ext4"));
    assert_eq!(
        seen(&bed, &svc, "old").disk_over,
        format!("disk over {}", root.join("rootfs.ext4").display())
    );
    assert_eq!(listed(&svc, ROOT), [(0, true, names(&["old"]))]);
    svc.start(ROOT, "old", None).await.expect("start");
    assert_eq!(seen(&bed, &svc, "old").kernel, root.join("vmlinuz"));

    // The first build is version 1; the old files stay under the old VM.
    assert_eq!(build(&svc, "v1").await.expect("build"), 1);
    assert!(flat.exists(), "the old image went under its VM");
    svc.restart(ROOT, "old", None).await.expect("restart");
    assert_eq!(seen(&bed, &svc, "old").kernel, root.join("vmlinuz"));
    svc.create(spec("new", false), ROOT, None)
        .await
        .expect("create new");
    assert_eq!(seen(&bed, &svc, "new").version, 1);
    assert_eq!(
        listed(&svc, ROOT),
        [(1, true, names(&["new"])), (0, false, names(&["old"]))]
    );
    // With its last VM the old image goes; version 1 is left intact.
    svc.delete(ROOT, "old", true, None).await.expect("delete");
    assert!(!root.join("rootfs.ext4").exists() && !root.join("manifest.json").exists());
    assert_eq!(catalog::versions(&l, DEFAULT_IMAGE), [1]);
    assert!(l.image_version(DEFAULT_IMAGE, 1).exists());
    assert_eq!(listed(&svc, ROOT), [(1, true, names(&["new"]))]);
}
