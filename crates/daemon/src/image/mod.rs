//! Guest images: building the default image from Debian packages, and the
//! catalog (list, remove).

pub mod build;
pub mod catalog;
pub mod cpio;
pub mod customize;
pub mod fromvm;
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
    /// The image has banger's guest agent (`qemu-guest-agent` and the
    /// units that start it in a template): VMs can be restored from
    /// templates of it. Images built before templates have not.
    #[serde(default)]
    pub guest_agent: bool,
    /// How its `banger-guest-init --restored` is told a restored VM's
    /// identity ([`crate::guest::restore::PROTOCOL`]); 0 for images built
    /// before the protocol had a number. Templates are made only of images
    /// that speak the daemon's protocol; the others boot cold.
    #[serde(default)]
    pub restore_protocol: u32,
    /// Its sshd says on the serial console when it listens
    /// ([`crate::guest::console::SSHD_LISTENS`]): a cold boot waits for
    /// that line before it tries SSH. Images built before do not.
    #[serde(default)]
    pub announces_sshd: bool,
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

impl Manifest {
    /// The manifest of the image at `paths`, if it has a readable one.
    pub fn read(paths: &crate::layout::ImagePaths) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(paths.manifest()).ok()?).ok()
    }
}

/// The name `vm create` uses when none is given.
pub const DEFAULT_IMAGE: &str = "default";
