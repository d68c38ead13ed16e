//! Images as the service sees them: build (one at a time, the default one
//! on first use), list, remove (never one a VM is based on). Each build is
//! a new version (see `image::catalog`); a VM keeps the version it was made
//! from, and a version goes when it is superseded and no VM uses it.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use banger_api::{ImageBuildSpec, ImageInfo};

use super::caller::Caller;
use super::error::VmError;
use super::record::VmRecord;
use super::service::{blocking, VmService, R};
use crate::image::{self, catalog, ImageError, DEFAULT_IMAGE};
use crate::layout::{ImagePaths, Layout};
use crate::opstate::{Op, Sink};
use crate::store::Store;

impl VmService {
    /// Builds the default image on first use; other images must exist.
    pub(super) async fn ensure_image(self: &Arc<Self>, op: &Op, name: &str) -> R<()> {
        if catalog::current(self.layout(), name).is_some() {
            return Ok(());
        }
        if name != DEFAULT_IMAGE {
            return Err(missing(name));
        }
        // Another create may be building it: wait for the build lock, then
        // look again.
        let _guard = self.image_lock.lock().await;
        if catalog::current(self.layout(), name).is_some() {
            return Ok(());
        }
        op.phase(
            "image",
            "building the default image (first use; takes a few minutes)",
            1,
        );
        let spec = ImageBuildSpec::default();
        self.build_image_locked(op, name, spec).await.map(drop)
    }

    /// The files of the version of image `name` a new VM gets now.
    pub(super) fn current_image(&self, name: &str) -> R<ImagePaths> {
        let version = catalog::current(self.layout(), name).ok_or_else(|| missing(name))?;
        Ok(self.layout().image_version(name, version))
    }

    /// Records a new VM on the current version of its image: no removal of
    /// a version can come between the choice and the row that keeps it.
    pub(super) fn insert_on_current_image(&self, draft: VmRecord) -> R<VmRecord> {
        let _pinned = lock(&self.image_pins);
        let version =
            catalog::current(self.layout(), &draft.image).ok_or_else(|| missing(&draft.image))?;
        let draft = VmRecord {
            image_version: version,
            ..draft
        };
        Ok(self.store.insert_vm(&draft, &self.plan())?)
    }

    /// `image build NAME`, as an operation: packages, script and suite
    /// are checked before anything starts.
    pub async fn image_build(
        self: &Arc<Self>,
        caller: Caller,
        name: &str,
        spec: ImageBuildSpec,
        sink: Option<Sink>,
    ) -> R<ImageInfo> {
        banger_api::validate_image_name(name)?;
        spec.validate()?;
        caller.must_be_root("`image build`")?;
        let op = self.ops.begin("image_build", &[], sink)?;
        let result = async {
            let _guard = self.image_lock.lock().await;
            let version = self.build_image_locked(&op, name, spec).await?;
            let current = catalog::current(self.layout(), name);
            catalog::info(self.layout(), name, version, current)
                .ok_or_else(|| VmError::Failed("the image build left no manifest".into()))
        }
        .await;
        op.finish(&result);
        result
    }

    /// Builds a new version of image `name`; the caller holds `image_lock`.
    async fn build_image_locked(
        self: &Arc<Self>,
        op: &Op,
        name: &str,
        spec: ImageBuildSpec,
    ) -> R<u32> {
        let report = op.reporter();
        let (layout, name2) = (self.layout().clone(), name.to_string());
        let netns = self.cfg.build_netns.clone();
        let version = self
            .install_image_locked(name, move |_| {
                image::build::build(&layout, &name2, &spec, netns.as_deref(), &report)
            })
            .await?;
        // Settle each backend's accelerator now rather than at the first boot.
        self.probe_backends_early();
        Ok(version)
    }

    /// Makes a new version of image `name` with `install` (the build, which
    /// installs through `catalog::install`; a fake one in tests), then
    /// removes the versions it superseded that no VM uses. The caller holds
    /// `image_lock`.
    pub(super) async fn install_image_locked(
        &self,
        name: &str,
        install: impl FnOnce(&Layout) -> Result<u32, ImageError> + Send + 'static,
    ) -> R<u32> {
        let layout = self.layout().clone();
        let version = blocking(move || install(&layout)).await?;
        self.prune_image(name, false).await;
        self.collect_templates();
        Ok(version)
    }

    /// Removes the versions of image `name` no VM uses that are no longer
    /// current (`after_crash`: and what an interrupted build left); a
    /// failure is only logged, the next prune tries again. Returns
    /// `NAME vVERSION` of each version removed.
    pub(super) async fn prune_image(&self, name: &str, after_crash: bool) -> Vec<String> {
        let (store, layout) = (self.store.clone(), self.layout().clone());
        let (pins, name) = (self.image_pins.clone(), name.to_string());
        blocking(
            move || match prune(&store, &layout, &pins, &name, after_crash) {
                Ok(removed) => removed.iter().map(|v| format!("{name} v{v}")).collect(),
                Err(e) => {
                    tracing::warn!(image = %name, "removing unused image versions: {e}");
                    Vec::new()
                }
            },
        )
        .await
    }

    /// Runs every pending accelerator probe in the background, with any
    /// built image's kernel.
    pub fn probe_backends_early(&self) {
        let Some(kernel) = catalog::names(self.layout())
            .into_iter()
            .find_map(|name| self.current_image(&name).ok())
        else {
            return;
        };
        for backend in self.host.backends.iter().filter(|b| b.probe_pending()) {
            let k = kernel.kernel_for(backend.capabilities().kernels);
            if !k.exists() {
                continue;
            }
            let b = backend.clone();
            tokio::task::spawn_blocking(move || b.probe(&k));
        }
    }

    /// Every version of every image, with the VMs `caller` may see that use
    /// it.
    pub fn image_list(&self, caller: Caller) -> R<Vec<ImageInfo>> {
        let mut users: BTreeMap<(String, u32), Vec<String>> = BTreeMap::new();
        for vm in self.store.list_vms()? {
            if caller.may_see(&vm) {
                users
                    .entry((vm.image, vm.image_version))
                    .or_default()
                    .push(vm.name);
            }
        }
        let mut images = catalog::list(self.layout())?;
        let templates = crate::template::list(self.layout());
        for img in &mut images {
            img.used_by = users
                .remove(&(img.name.clone(), img.version))
                .unwrap_or_default();
            img.templates = templates
                .iter()
                .map(|t| &t.meta.shape)
                .filter(|s| s.image == img.name && s.image_version == img.version)
                .map(|s| format!("{}c-{}m-{}g", s.cpus, s.memory_mib, s.disk_gib))
                .collect();
        }
        Ok(images)
    }

    /// `image rm NAME`: every version goes; refused while a VM is based on
    /// any of them, or while an image build runs.
    pub fn image_rm(&self, caller: Caller, name: &str) -> R<()> {
        banger_api::validate_image_name(name)?;
        caller.must_be_root("`image rm`")?;
        if !self.layout().image_root(name).exists() {
            return Err(VmError::ImageMissing(format!(
                "no image named {name:?}; `banger image list` shows the images"
            )));
        }
        let Ok(_building) = self.image_lock.try_lock() else {
            return Err(VmError::InUse(
                "an image build is running; remove the image when it has finished".into(),
            ));
        };
        let _pinned = lock(&self.image_pins);
        let users: Vec<String> = self
            .store
            .list_vms()?
            .into_iter()
            .filter(|v| v.image == name)
            .map(|v| format!("{} (version {})", v.name, v.image_version))
            .collect();
        if !users.is_empty() {
            return Err(VmError::InUse(format!(
                "image {name:?} is the base of VM(s) {}; delete them first",
                users.join(", ")
            )));
        }
        catalog::remove(self.layout(), name)?;
        self.collect_templates();
        Ok(())
    }
}

/// Removes the versions of image `name` no VM uses that are no longer
/// current, under the pin lock (see [`catalog::prune`]).
fn prune(
    store: &Store,
    layout: &Layout,
    pins: &Mutex<()>,
    name: &str,
    after_crash: bool,
) -> R<Vec<u32>> {
    let _pinned = lock(pins);
    let in_use: HashSet<u32> = store
        .list_vms()?
        .into_iter()
        .filter(|v| v.image == name)
        .map(|v| v.image_version)
        .collect();
    Ok(catalog::prune(layout, name, &in_use, after_crash)?)
}

fn lock(pins: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    pins.lock().unwrap_or_else(|p| p.into_inner())
}

fn missing(name: &str) -> VmError {
    VmError::ImageMissing(format!(
        "no image named {name:?}; build it with `banger image build {name}`"
    ))
}
