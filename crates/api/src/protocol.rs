//! The socket protocol: one JSON request line from the client, then JSON
//! event lines from the daemon: zero or more `progress`, then exactly one
//! `ok` or `error`.

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::imagespec::ImageBuildSpec;
use crate::types::VmSpec;

/// Every request the daemon serves. Mutating ones run as operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Ping,
    VmCreate {
        spec: VmSpec,
    },
    VmStart {
        name: String,
    },
    VmStop {
        name: String,
    },
    VmRestart {
        name: String,
    },
    VmKill {
        name: String,
        signal: String,
    },
    VmDelete {
        name: String,
        force: bool,
    },
    /// Deletes every VM not running; `dry_run` only lists them.
    VmPrune {
        dry_run: bool,
    },
    VmList,
    VmShow {
        name: String,
    },
    VmSsh {
        name: String,
    },
    /// Up to 256 KiB of the serial console from byte `offset` on.
    VmLogRead {
        name: String,
        offset: u64,
    },
    /// The pinned host keys of the caller's VMs, as known_hosts lines.
    KnownHosts,
    VmPorts {
        name: String,
    },
    WorkspacePrepare {
        name: String,
        /// Absolute path on the host.
        repo: String,
        /// `overlay` or `full_copy`.
        mode: String,
        readonly: bool,
        include_ignored: bool,
    },
    WorkspaceExport {
        name: String,
        base_commit: Option<String>,
    },
    ImageBuild {
        name: String,
        /// Packages, script and suite; an older client sends none.
        #[serde(default)]
        spec: ImageBuildSpec,
    },
    /// A new version of image `name` from the disk of stopped VM `from_vm`.
    ImageCreate {
        name: String,
        from_vm: String,
    },
    /// Sets (seconds from now) or clears (`None`) a VM's lifetime.
    VmSetTtl {
        name: String,
        ttl_secs: Option<u64>,
    },
    ImageList,
    ImageRm {
        name: String,
    },
    OpList,
    SshConfig,
}

impl Request {
    /// The VM a request acts on, if any.
    pub fn vm_name(&self) -> Option<&str> {
        match self {
            Request::VmCreate { spec } => Some(&spec.name),
            Request::VmStart { name }
            | Request::VmStop { name }
            | Request::VmRestart { name }
            | Request::VmKill { name, .. }
            | Request::VmDelete { name, .. }
            | Request::VmShow { name }
            | Request::VmSsh { name }
            | Request::VmLogRead { name, .. }
            | Request::VmPorts { name }
            | Request::WorkspacePrepare { name, .. }
            | Request::WorkspaceExport { name, .. }
            | Request::VmSetTtl { name, .. } => Some(name),
            Request::ImageCreate { from_vm, .. } => Some(from_vm),
            _ => None,
        }
    }
}

/// A step of a long operation, for the CLI's progress line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub phase: String,
    pub message: String,
    /// 0-100.
    pub percent: u8,
}

/// One line the daemon sends back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Progress(Progress),
    /// A chunk of a large answer (a patch), base64, in order; the final
    /// `Ok` follows the last one.
    Data(String),
    Ok(serde_json::Value),
    Error(ApiError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let r = Request::VmKill {
            name: "dev".into(),
            signal: "KILL".into(),
        };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(line, r#"{"op":"vm_kill","name":"dev","signal":"KILL"}"#);
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), r);
        assert_eq!(r.vm_name(), Some("dev"));
    }
}
