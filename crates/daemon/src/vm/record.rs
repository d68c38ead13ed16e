//! The VM as the daemon stores it: everything the wire type [`VmInfo`]
//! shows, plus what only the daemon needs (the runtime handle, the owner).

use banger_api::types::WorkspaceInfo;
use banger_api::{VmInfo, VmSpec, VmState};

use crate::disk::Strategy;
use crate::layout::{ImagePaths, Layout};
use crate::vmm::RuntimeHandle;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRecord {
    pub name: String,
    pub state: VmState,
    /// The pool slot; IP, MAC and tap follow from it.
    pub slot: u32,
    pub ip: String,
    pub mac: String,
    pub tap: String,
    /// The VMM backend (`Vmm::name`) that runs this VM.
    pub backend: String,
    /// How the root disk is made over the image.
    pub disk: Strategy,
    /// The VMM process while the VM may be running.
    pub runtime: Option<RuntimeHandle>,
    pub cpus: u32,
    pub memory_mib: u32,
    pub disk_gib: u32,
    pub image: String,
    /// The version of `image` the root disk is made over (see
    /// `image::catalog`): picked at create, kept until the VM is deleted.
    pub image_version: u32,
    pub nat: bool,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
    /// Why the VM is in `error`, when it is.
    pub last_error: Option<String>,
    pub workspace: Option<WorkspaceInfo>,
    /// The uid of the caller that created it.
    pub owner_uid: u32,
    /// The template the VM was restored from: its root disk is made over
    /// the template's disk instead of the image's.
    pub template: Option<String>,
    /// When the daemon deletes it (`--ttl`), seconds since the Unix epoch.
    pub expires_at: Option<i64>,
}

impl VmRecord {
    /// A VM about to be created; the store fills in its slot and addresses.
    pub fn draft(spec: &VmSpec, backend: &str, disk: Strategy, owner_uid: u32) -> Self {
        VmRecord {
            name: spec.name.clone(),
            state: VmState::Creating,
            slot: 0,
            ip: String::new(),
            mac: String::new(),
            tap: String::new(),
            backend: backend.to_string(),
            disk,
            runtime: None,
            cpus: spec.cpus,
            memory_mib: spec.memory_mib,
            disk_gib: spec.disk_gib,
            image: spec.image.clone(),
            // Set when the VM is recorded, to the image's current version.
            image_version: crate::layout::LEGACY_IMAGE_VERSION,
            nat: spec.nat,
            created_at: crate::store::now(),
            last_error: None,
            workspace: None,
            owner_uid,
            template: None,
            expires_at: None,
        }
    }

    /// What the VM's root disk is made over: its template's disk, or the
    /// image's root filesystem.
    pub fn disk_base(&self, layout: &Layout) -> std::path::PathBuf {
        match &self.template {
            Some(t) => layout
                .template_dir(t)
                .join(crate::template::disk_file(self.disk)),
            None => self.image_files(layout).rootfs(),
        }
    }

    /// The files of the image version the VM boots from.
    pub fn image_files(&self, layout: &Layout) -> ImagePaths {
        layout.image_version(&self.image, self.image_version)
    }

    /// What `vm show --json` prints.
    pub fn info(&self) -> VmInfo {
        VmInfo {
            name: self.name.clone(),
            state: self.state,
            ip: self.ip.clone(),
            mac: self.mac.clone(),
            tap: self.tap.clone(),
            slot: self.slot,
            vmm: self.backend.clone(),
            disk_strategy: self.disk.as_str().to_string(),
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            disk_gib: self.disk_gib,
            image: self.image.clone(),
            image_version: self.image_version,
            nat: self.nat,
            created_at: self.created_at,
            pid: self.runtime.map(|r| r.pid),
            last_error: self.last_error.clone(),
            workspace: self.workspace.clone(),
            template: self.template.clone(),
            expires_at: self.expires_at,
        }
    }
}
