//! The socket protocol: one JSON request line from the client (followed,
//! for an upload, by [`Upload`] frames), then JSON event lines from the
//! daemon: zero or more `progress` and `data`, then exactly one `ok` or
//! `error`.

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
    /// `vm cp` into a VM: a tar whose one top entry is `source_name`
    /// follows the request as [`Upload`] frames; it lands at `dest` as
    /// `docker cp` would put it.
    VmCpIn {
        name: String,
        /// Where in the guest (relative paths start at /root).
        dest: String,
        /// The base name of what is copied (the tar's top entry).
        source_name: String,
        /// What is copied is a directory.
        source_is_dir: bool,
        /// `SRC/.`: the directory's contents, merged into an existing `dest`.
        contents: bool,
    },
    /// `vm cp` out of a VM: the answer streams (data events) a tar of
    /// `src`, its one top entry `src`'s base name, or with `contents` the
    /// directory's entries themselves.
    VmCpOut {
        name: String,
        src: String,
        contents: bool,
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
            | Request::VmSetTtl { name, .. }
            | Request::VmCpIn { name, .. }
            | Request::VmCpOut { name, .. } => Some(name),
            Request::ImageCreate { from_vm, .. } => Some(from_vm),
            _ => None,
        }
    }

    /// Whether [`Upload`] frames follow this request on the connection.
    pub fn takes_upload(&self) -> bool {
        matches!(self, Request::VmCpIn { .. })
    }
}

/// What a client sends after a request that takes an upload: data frames
/// (base64, in order, at most [`UPLOAD_FRAME`] bytes each once decoded),
/// then `end`. A connection that closes before `end` is a failed upload,
/// and the daemon keeps nothing of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Upload {
    Data(String),
    End,
}

/// The most bytes one upload frame carries, decoded.
pub const UPLOAD_FRAME: usize = 64 << 10;

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

    #[test]
    fn upload_frames_are_one_json_line_each() {
        let line = serde_json::to_string(&Upload::Data("aGk=".into())).unwrap();
        assert_eq!(line, r#"{"data":"aGk="}"#);
        assert_eq!(serde_json::to_string(&Upload::End).unwrap(), r#""end""#);
        let cp = Request::VmCpOut {
            name: "dev".into(),
            src: "/etc".into(),
            contents: false,
        };
        assert!(!cp.takes_upload());
        assert_eq!(cp.vm_name(), Some("dev"));
    }
}
