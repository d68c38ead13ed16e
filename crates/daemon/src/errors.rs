//! Maps each module's error enum onto the wire error a client sees.

use banger_api::{ApiError, ErrorCode};

use crate::cmd::CmdError;
use crate::disk::DiskError;
use crate::guest::GuestError;
use crate::hostnet::NetError;
use crate::image::ImageError;
use crate::store::StoreError;
use crate::vmm::VmmError;
use crate::workspace::WorkspaceError;

impl From<CmdError> for ApiError {
    fn from(e: CmdError) -> Self {
        let code = match e {
            CmdError::Missing { .. } => ErrorCode::HostMissing,
            _ => ErrorCode::Internal,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let code = match e {
            StoreError::Duplicate(_) => ErrorCode::AlreadyExists,
            StoreError::PoolExhausted => ErrorCode::InvalidArgument,
            StoreError::Sql(_) => ErrorCode::Internal,
        };
        ApiError::new(code, e.to_string())
    }
}

macro_rules! with_cmd_source {
    ($($t:ident),*) => {$(
        impl From<$t> for ApiError {
            fn from(e: $t) -> Self {
                match e {
                    $t::Cmd(c) => c.into(),
                    other => ApiError::internal(other.to_string()),
                }
            }
        }
    )*};
}

with_cmd_source!(
    NetError,
    DiskError,
    GuestError,
    VmmError,
    ImageError,
    WorkspaceError
);
