//! `image create --from-vm` on the fake host: only from a stopped VM,
//! only root; the new version is the VM's disk, new VMs are made over it,
//! and it outlives the VM and the version the VM came from.

use std::sync::Arc;

use banger_api::{ApiError, ErrorCode};

use super::bed::{spec, Bed};
use crate::vm::{Caller, VmError};

const ROOT: Caller = Caller::ROOT;
const ALICE: Caller = Caller {
    uid: 1000,
    gid: 1000,
};

fn refused(e: VmError) -> (ErrorCode, String) {
    let e = ApiError::from(e);
    (e.code, e.message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_from_a_stopped_vm_is_its_disk_and_outlives_it() {
    let bed = Arc::new(Bed::new());
    let svc = bed.daemon();
    let l = bed.cfg.layout.clone();
    svc.create(spec("dev", false), ROOT, None)
        .await
        .expect("create");
    let (c, msg) = refused(
        svc.image_create(ROOT, "mine", "dev", None)
            .await
            .unwrap_err(),
    );
    assert_eq!(c, ErrorCode::InvalidState);
    assert!(msg.contains("banger vm stop dev"), "{msg}");
    svc.stop(ROOT, "dev", None).await.expect("stop");
    for (caller, image, vm, want) in [
        (ALICE, "mine", "dev", ErrorCode::Forbidden),
        (ROOT, "Mine", "dev", ErrorCode::InvalidName),
        (ROOT, "mine", "nope", ErrorCode::NotFound),
    ] {
        let (c, _) = refused(svc.image_create(caller, image, vm, None).await.unwrap_err());
        assert_eq!(c, want, "{image} {vm}");
    }
    assert!(
        !l.image_root("mine").exists(),
        "a refused create made files"
    );

    let info = svc
        .image_create(ROOT, "mine", "dev", None)
        .await
        .expect("image create");
    assert_eq!((info.version, info.current), (1, true));
    assert_eq!(info.from_vm.as_deref(), Some("dev (default v1)"));
    assert_eq!(
        (info.suite.as_str(), info.kernel.as_str()),
        ("bookworm", "v1")
    );
    let mine = l.image_version("mine", 1);
    let dev_disk = l.vm_disk("dev", svc.record("dev").unwrap().disk);
    assert_eq!(
        std::fs::read(mine.rootfs()).unwrap(),
        std::fs::read(&dev_disk).unwrap(),
        "the image is the VM's disk"
    );

    // The VM and the image it came from go; the new image stays usable.
    svc.delete(ROOT, "dev", true, None).await.expect("delete");
    svc.image_rm(ROOT, "default").expect("rm default");
    let mut s = spec("child", false);
    s.image = "mine".into();
    svc.create(s, ROOT, None)
        .await
        .expect("a VM of the new image");
    let child = svc.record("child").unwrap();
    assert_eq!((child.image.as_str(), child.image_version), ("mine", 1));
    let disk = std::fs::read_to_string(l.vm_disk("child", child.disk)).unwrap();
    assert_eq!(disk, format!("disk over {}", mine.rootfs().display()));
    assert!(bed.leaks().is_empty(), "{:?}", bed.leaks());
}
