//! Error codes the daemon returns, and the error type both sides share.

use serde::{Deserialize, Serialize};

/// What went wrong, in a form a client can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A name breaks the naming rules.
    InvalidName,
    /// Some other argument is wrong.
    InvalidArgument,
    /// The VM, image or operation does not exist.
    NotFound,
    /// A VM or image with that name exists already.
    AlreadyExists,
    /// Another mutating operation holds the VM, or the daemon serves as
    /// many connections as it allows; trying again later may work.
    Busy,
    /// The VM is in a state that does not allow the request.
    InvalidState,
    /// The host lacks something (a binary, a module, a permission).
    HostMissing,
    /// `vm kill` or `vm delete -f` took the VM from this operation.
    Cancelled,
    /// Only root may do this.
    Forbidden,
    /// Anything else; the message says what.
    Internal,
}

/// An error with a one-line message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let message: String = message.into();
        // One line: the CLI prints it as is.
        let message = message.replace('\n', " ");
        Self { code, message }
    }

    pub fn not_found_vm(name: &str) -> Self {
        Self::new(
            ErrorCode::NotFound,
            format!("no VM named {name:?}; `banger vm list` shows the VMs"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}
