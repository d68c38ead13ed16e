//! The one place where the daemon's typed errors become the wire error a
//! client sees: the code is chosen from what went wrong, the message is the
//! error's own one line (with any context before it).

use banger_api::{ApiError, ErrorCode};

use crate::cmd::CmdError;
use crate::hosterror::HostError;
use crate::hostnet::NetError;
use crate::store::StoreError;
use crate::vm::VmError;
use crate::vmm::VmmError;

impl From<VmError> for ApiError {
    fn from(e: VmError) -> Self {
        if let VmError::Refused(api) = e {
            return api;
        }
        ApiError::new(code_of(e.root()), e.to_string())
    }
}

fn code_of(e: &VmError) -> ErrorCode {
    match e {
        VmError::Refused(api) => api.code,
        VmError::NotFound(_) | VmError::ImageMissing(_) => ErrorCode::NotFound,
        VmError::Duplicate(_) | VmError::Exists(_) => ErrorCode::AlreadyExists,
        VmError::InvalidState { .. }
        | VmError::Transition { .. }
        | VmError::InUse(_)
        | VmError::Lacks(_) => ErrorCode::InvalidState,
        VmError::InvalidArgument(_) => ErrorCode::InvalidArgument,
        VmError::HostMissing(_) => ErrorCode::HostMissing,
        VmError::Cancelled(_) => ErrorCode::Cancelled,
        VmError::Forbidden(_) => ErrorCode::Forbidden,
        VmError::Store(s) => store_code(s),
        VmError::Cmd(c) | VmError::Net(NetError::Cmd(c)) | VmError::Vmm(VmmError::Cmd(c)) => {
            cmd_code(c)
        }
        VmError::Host(HostError::Cmd(c)) => cmd_code(c),
        VmError::Host(HostError::Invalid(_)) => ErrorCode::InvalidArgument,
        VmError::Net(NetError::BadSubnet(_)) => ErrorCode::InvalidArgument,
        VmError::Vmm(VmmError::NotSupported { .. }) => ErrorCode::HostMissing,
        VmError::Step { .. }
        | VmError::Net(NetError::Sysctl { .. })
        | VmError::Failed(_)
        | VmError::Host(_)
        | VmError::Vmm(_) => ErrorCode::Internal,
    }
}

fn cmd_code(e: &CmdError) -> ErrorCode {
    match e {
        CmdError::Missing { .. } => ErrorCode::HostMissing,
        _ => ErrorCode::Internal,
    }
}

fn store_code(e: &StoreError) -> ErrorCode {
    match e {
        StoreError::Duplicate(_) => ErrorCode::AlreadyExists,
        StoreError::PoolExhausted => ErrorCode::InvalidArgument,
        StoreError::Conflict { .. } => ErrorCode::InvalidState,
        StoreError::Sql(_) | StoreError::Corrupt(_) => ErrorCode::Internal,
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        VmError::from(e).into()
    }
}

impl From<HostError> for ApiError {
    fn from(e: HostError) -> Self {
        VmError::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_api::VmState;

    #[test]
    fn codes_follow_the_innermost_error_and_messages_keep_context() {
        let e = VmError::state("dev", VmState::Running, "stop it first").context("deleting dev");
        let api = ApiError::from(e);
        assert_eq!(api.code, ErrorCode::InvalidState);
        assert_eq!(
            api.message,
            "deleting dev: VM \"dev\" is running; stop it first"
        );
        let missing = VmError::Cmd(CmdError::Missing {
            program: "qemu-img".into(),
        });
        assert_eq!(ApiError::from(missing).code, ErrorCode::HostMissing);
        let refused = ApiError::new(ErrorCode::InvalidName, "bad name");
        assert_eq!(ApiError::from(VmError::from(refused.clone())), refused);
    }
}
