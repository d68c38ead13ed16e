//! Guest images: building the default image from Debian packages, and the
//! catalog (list, remove).

pub mod build;
pub mod catalog;
pub mod cpio;
pub mod customize;
pub mod fromvm;

/// See [`crate::hosterror::HostError`].
pub type ImageError = crate::hosterror::HostError;

/// The manifest written last into an image directory.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub name: String,
    pub kernel: String,
    pub suite: String,
    pub built_at: i64,
    /// Packages beyond the base set.
    #[serde(default)]
    pub includes: Vec<String>,
    /// SHA-256 of the build script, if there was one.
    #[serde(default)]
    pub script_sha256: Option<String>,
    /// `VM (IMAGE vVERSION)` for an image made from a VM's disk.
    #[serde(default)]
    pub from_vm: Option<String>,
}

/// The name `vm create` uses when none is given.
pub const DEFAULT_IMAGE: &str = "default";
