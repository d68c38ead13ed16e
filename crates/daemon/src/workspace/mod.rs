//! Workspaces: a host git repo placed at `/root/repo` in a guest, and the
//! guest's work exported back as a patch. Bulk data goes through a block
//! device (an ext4 image or a tar file attached to the VM), never over SSH;
//! SSH carries only commands and the exported patch.

pub mod image;
pub mod ops;
pub mod pack;
pub mod reader;
pub mod scripts;

/// Where the repo appears in the guest.
pub const GUEST_REPO: &str = "/root/repo";

/// The serial a workspace drive carries, so the guest can find it.
pub const DRIVE_SERIAL: &str = "banger-ws";

/// The serial of the drive that carries a `full_copy` tar, once.
pub const IMPORT_SERIAL: &str = "banger-ws-import";

/// The ids the two workspace drives have in the VMM (a backend without
/// hot-plug reserves a slot for each at boot).
pub const DRIVE_ID: &str = "workspace";
pub const IMPORT_ID: &str = "import";

/// How the repo reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A read-only ext4 image attached to the VM, mounted as the lower
    /// layer of an overlay whose upper layer is on the guest's disk.
    Overlay,
    /// A tar attached once and extracted into the guest's root filesystem.
    FullCopy,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "overlay" => Some(Mode::Overlay),
            "full_copy" | "full-copy" => Some(Mode::FullCopy),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Overlay => "overlay",
            Mode::FullCopy => "full_copy",
        }
    }
}

/// See [`crate::hosterror::HostError`].
pub type WorkspaceError = crate::hosterror::HostError;
