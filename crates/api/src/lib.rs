//! banger's wire contract: VM name rules, request and response types, error
//! codes, and the blocking client the CLI uses to talk to the daemon.

pub mod client;
pub mod duration;
pub mod error;
pub mod imagespec;
pub mod names;
pub mod protocol;
pub mod types;

pub use error::{ApiError, ErrorCode};
pub use imagespec::ImageBuildSpec;
pub use names::{validate_image_name, validate_vm_name};
pub use protocol::{Event, Progress, Request, Upload, UPLOAD_FRAME};
pub use types::{
    ImageInfo, OpInfo, OpState, PortInfo, SshInfo, VmInfo, VmSpec, VmState, WorkspaceSpec,
};

/// Default path of the daemon's socket.
pub const DEFAULT_SOCKET: &str = "/run/banger/banger.sock";
