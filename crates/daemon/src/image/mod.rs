//! Guest images: building the default image from Debian packages, and the
//! catalog (list, remove).

pub mod build;
pub mod catalog;
pub mod cpio;
pub mod customize;
pub mod vmlinux;

/// See [`crate::hosterror::HostError`].
pub type ImageError = crate::hosterror::HostError;

/// The manifest written last into an image directory.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub name: String,
    pub kernel: String,
    pub suite: String,
    pub built_at: i64,
}

/// The name `vm create` uses when none is given.
pub const DEFAULT_IMAGE: &str = "default";
