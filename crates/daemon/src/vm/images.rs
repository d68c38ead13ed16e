//! Images as the service sees them: build (one at a time, the default one
//! on first use), list, remove (never one a VM is based on).

use std::sync::Arc;

use banger_api::ImageInfo;

use super::caller::Caller;
use super::error::VmError;
use super::service::{blocking, VmService, R};
use crate::image::{self, catalog, DEFAULT_IMAGE};
use crate::opstate::{Op, Sink};

impl VmService {
    /// Builds the default image on first use; other images must exist.
    pub(super) async fn ensure_image(self: &Arc<Self>, op: &Op, name: &str) -> R<()> {
        if self.layout().image(name).exists() {
            return Ok(());
        }
        if name != DEFAULT_IMAGE {
            return Err(VmError::ImageMissing(format!(
                "no image named {name:?}; build it with `banger image build {name}`"
            )));
        }
        // Another create may be building it: wait for the build lock, then
        // look again.
        let _guard = self.image_lock.lock().await;
        if self.layout().image(name).exists() {
            return Ok(());
        }
        op.phase(
            "image",
            "building the default image (first use; takes a few minutes)",
            1,
        );
        self.build_image_locked(op, name).await
    }

    /// `image build NAME`, as an operation.
    pub async fn image_build(
        self: &Arc<Self>,
        caller: Caller,
        name: &str,
        sink: Option<Sink>,
    ) -> R<ImageInfo> {
        banger_api::validate_image_name(name)?;
        caller.must_be_root("`image build`")?;
        let op = self.ops.begin("image_build", &[], sink)?;
        let result = async {
            let _guard = self.image_lock.lock().await;
            self.build_image_locked(&op, name).await?;
            catalog::info(&self.layout().image(name))
                .ok_or_else(|| VmError::Failed("the image build left no manifest".into()))
        }
        .await;
        op.finish(&result);
        result
    }

    /// Builds image `name`; the caller holds `image_lock`.
    async fn build_image_locked(self: &Arc<Self>, op: &Op, name: &str) -> R<()> {
        let paths = self.layout().image(name);
        let report = op.reporter();
        let name = name.to_string();
        let netns = self.cfg.build_netns.clone();
        blocking(move || image::build::build(&name, &paths, netns.as_deref(), &report)).await?;
        // Settle each backend's accelerator now rather than at the first boot.
        self.probe_backends_early();
        Ok(())
    }

    /// Runs every pending accelerator probe in the background, with any
    /// built image's kernel.
    pub fn probe_backends_early(&self) {
        let Some(img) = catalog::list(self.layout())
            .ok()
            .and_then(|l| l.into_iter().next())
        else {
            return;
        };
        let kernel = self.layout().image(&img.name).kernel();
        for backend in self.host.backends.iter().filter(|b| b.probe_pending()) {
            let (b, k) = (backend.clone(), kernel.clone());
            tokio::task::spawn_blocking(move || b.probe(&k));
        }
    }

    pub fn image_list(&self) -> R<Vec<ImageInfo>> {
        Ok(catalog::list(self.layout())?)
    }

    /// `image rm NAME`: refused while a VM is based on it.
    pub fn image_rm(&self, caller: Caller, name: &str) -> R<()> {
        banger_api::validate_image_name(name)?;
        caller.must_be_root("`image rm`")?;
        let paths = self.layout().image(name);
        if !paths.dir.exists() {
            return Err(VmError::ImageMissing(format!(
                "no image named {name:?}; `banger image list` shows the images"
            )));
        }
        let users: Vec<String> = self
            .store
            .list_vms()?
            .into_iter()
            .filter(|v| v.image == name)
            .map(|v| v.name)
            .collect();
        if !users.is_empty() {
            return Err(VmError::InUse(format!(
                "image {name:?} is the base of VM(s) {}; delete them first",
                users.join(", ")
            )));
        }
        Ok(catalog::remove(&paths)?)
    }
}
