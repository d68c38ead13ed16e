//! `image create NAME --from-vm VM`: a new version of image NAME from a
//! stopped VM's root disk (see `image::fromvm` for how, and why it takes
//! time that grows with the VM's changes, not with the image). The VM is
//! held for the copy, so it cannot start under it; new VMs of NAME boot
//! the parent version's kernel and initrd.

use std::sync::Arc;

use banger_api::{ImageInfo, VmState};

use super::caller::Caller;
use super::error::VmError;
use super::record::VmRecord;
use super::runner::{Claim, OpKind};
use super::service::{VmService, R};
use crate::image::{catalog, fromvm, Manifest};
use crate::opstate::Sink;

const IMAGE_CREATE: OpKind = OpKind {
    name: "image_create",
    check: stopped,
    claim: Claim::Exclusive,
    needs_vmm: false,
};

impl VmService {
    pub async fn image_create(
        self: &Arc<Self>,
        caller: Caller,
        name: &str,
        from_vm: &str,
        sink: Option<Sink>,
    ) -> R<ImageInfo> {
        banger_api::validate_image_name(name)?;
        banger_api::validate_vm_name(from_vm)?;
        caller.must_be_root("`image create`")?;
        self.run_op(IMAGE_CREATE, caller, from_vm, sink, async |op, vm| {
            let _guard = self.image_lock.lock().await;
            op.phase(
                "image",
                &format!("making image {name} from the disk of {}", vm.name),
                10,
            );
            let layout = self.layout().clone();
            let parent = vm.image_files(&layout);
            let manifest = derived_manifest(&parent, name, &vm)?;
            let disk = layout.vm_disk(&vm.name, vm.disk);
            let template_disk = vm.template.is_some().then(|| vm.disk_base(&layout));
            let (strategy, name2) = (vm.disk, name.to_string());
            let version = self
                .install_image_locked(name, move |layout| {
                    catalog::install(layout, &name2, |out| {
                        let src = fromvm::Source {
                            parent: &parent,
                            disk: &disk,
                            template_disk: template_disk.as_deref(),
                            strategy,
                            manifest,
                        };
                        fromvm::populate(out, &src)
                    })
                })
                .await?;
            op.phase("done", &format!("image {name} version {version}"), 100);
            let current = catalog::current(self.layout(), name);
            catalog::info(self.layout(), name, version, current)
                .ok_or_else(|| VmError::Failed("the new image version has no manifest".into()))
        })
        .await
    }
}

/// The parent's manifest, renamed, dated now, marked as made from `vm`.
fn derived_manifest(parent: &crate::layout::ImagePaths, name: &str, vm: &VmRecord) -> R<Manifest> {
    let text = std::fs::read_to_string(parent.manifest()).map_err(|e| {
        VmError::ImageMissing(format!(
            "the image {} version {} of {} is not readable ({e}); it cannot be the base of a new image",
            vm.image, vm.image_version, vm.name
        ))
    })?;
    let m: Manifest = serde_json::from_str(&text)
        .map_err(|e| VmError::Failed(format!("{}: {e}", parent.manifest().display())))?;
    Ok(Manifest {
        name: name.to_string(),
        built_at: crate::store::now(),
        from_vm: Some(format!("{} ({} v{})", vm.name, vm.image, vm.image_version)),
        ..m
    })
}

/// The VM must be stopped: its disk is copied as it is.
fn stopped(vm: &VmRecord) -> R<()> {
    match vm.state {
        VmState::Stopped => Ok(()),
        state => Err(VmError::state(
            &vm.name,
            state,
            format!(
                "an image is made from a stopped VM's disk; run `banger vm stop {}` first",
                vm.name
            ),
        )),
    }
}
