//! Who is asking: the uid and gid the kernel reports for the socket's peer
//! (`SO_PEERCRED`). Root sees and acts on every VM; anyone else on their
//! own only (another user's VM is "not found", as if it did not exist).

use super::error::VmError;
use super::record::VmRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

impl Caller {
    pub const ROOT: Caller = Caller { uid: 0, gid: 0 };

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether this caller may see and act on `vm`.
    pub fn may_see(&self, vm: &VmRecord) -> bool {
        self.is_root() || vm.owner_uid == self.uid
    }

    /// Refuses what only root may do (shared resources such as images).
    pub fn must_be_root(&self, what: &str) -> Result<(), VmError> {
        if self.is_root() {
            Ok(())
        } else {
            Err(VmError::Forbidden(format!(
                "{what} changes what every user shares; run it as root (sudo banger ...)"
            )))
        }
    }
}
