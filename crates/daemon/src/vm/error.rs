//! The VM service's error: typed up to the edge, where `errors.rs` maps it
//! onto the wire error a client sees. Every message is one line that says
//! what failed and what to do.

use banger_api::{ApiError, VmState};

use crate::cmd::CmdError;
use crate::hosterror::HostError;
use crate::hostnet::NetError;
use crate::store::StoreError;
use crate::vmm::VmmError;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Refused at the door: a name, a signal, a size (see `banger_api`).
    #[error(transparent)]
    Refused(#[from] ApiError),
    #[error("no VM named {0:?}; `banger vm list` shows the VMs")]
    NotFound(String),
    #[error("a VM named {0:?} already exists; pick another name or delete it first")]
    Duplicate(String),
    #[error("VM {name:?} is {state}; {hint}")]
    InvalidState {
        name: String,
        state: VmState,
        hint: String,
    },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    ImageMissing(String),
    /// Something the request would remove or replace is still in use.
    #[error("{0}")]
    InUse(String),
    /// The VM lacks what the request needs (a workspace, ...).
    #[error("{0}")]
    Lacks(String),
    /// Something with that name or role exists already.
    #[error("{0}")]
    Exists(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The host or this build lacks what the request needs.
    #[error("{0}")]
    HostMissing(String),
    /// A state change lost a race, or a bug asked for a forbidden one.
    #[error("VM {name:?}: cannot go from {from} to {to} ({why})")]
    Transition {
        name: String,
        from: VmState,
        to: VmState,
        why: &'static str,
    },
    #[error("{context}: {source}")]
    Step {
        context: String,
        #[source]
        source: Box<VmError>,
    },
    #[error("{0}")]
    Failed(String),
    /// A preempting operation (`vm kill`, `vm delete -f`) took the VM.
    #[error("{0}")]
    Cancelled(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Cmd(#[from] CmdError),
    /// Disks, guest access, images, workspaces.
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Vmm(#[from] VmmError),
}

impl VmError {
    pub fn state(name: &str, state: VmState, hint: impl Into<String>) -> Self {
        VmError::InvalidState {
            name: name.to_string(),
            state,
            hint: hint.into(),
        }
    }

    /// Prefixes what was being done: "booting dev: ...".
    pub fn context(self, context: impl Into<String>) -> Self {
        VmError::Step {
            context: context.into(),
            source: Box::new(self),
        }
    }

    /// The innermost error, past any context.
    pub fn root(&self) -> &VmError {
        match self {
            VmError::Step { source, .. } => source.root(),
            other => other,
        }
    }
}

/// Adds context to any error that becomes a [`VmError`].
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, VmError>;
}

impl<T, E: Into<VmError>> Context<T> for Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, VmError> {
        self.map_err(|e| e.into().context(what()))
    }
}
