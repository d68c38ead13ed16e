//! The records the daemon reports: VMs, images, operations, SSH access.

use serde::{Deserialize, Serialize};

/// Lifecycle state of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Creating,
    Running,
    Stopping,
    Stopped,
    Error,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Creating => "creating",
            VmState::Running => "running",
            VmState::Stopping => "stopping",
            VmState::Stopped => "stopped",
            VmState::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => VmState::Creating,
            "running" => VmState::Running,
            "stopping" => VmState::Stopping,
            "stopped" => VmState::Stopped,
            "error" => VmState::Error,
            _ => return None,
        })
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a user asks for at `vm create`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VmSpec {
    pub name: String,
    pub cpus: u32,
    pub memory_mib: u32,
    pub disk_gib: u32,
    pub image: String,
    pub nat: bool,
    /// Public keys the guest authorizes besides the daemon's (a non-root
    /// caller's own key, so it can `ssh NAME.vm` itself).
    #[serde(default)]
    pub authorized_keys: Vec<String>,
    /// Boot cold even when a template of this shape exists.
    #[serde(default)]
    pub cold: bool,
    /// `--disk-strategy` for this VM (`auto`, `qcow2`, `dm-snapshot`,
    /// `reflink`, `copy`); none: the daemon's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_strategy: Option<String>,
    /// Lifetime in seconds (`--ttl`): the daemon deletes the VM when it ends.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// A workspace prepared as part of the create (`--repo`); if that
    /// fails, the VM goes.
    #[serde(default)]
    pub workspace: Option<WorkspaceSpec>,
}

/// The workspace `vm create --repo` prepares (as `workspace prepare`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceSpec {
    /// Absolute path on the host.
    pub repo: String,
    /// `overlay` or `full_copy`.
    pub mode: String,
    pub readonly: bool,
    #[serde(default)]
    pub include_ignored: bool,
}

/// A VM as `vm show --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: String,
    pub state: VmState,
    pub ip: String,
    pub mac: String,
    pub tap: String,
    pub slot: u32,
    pub vmm: String,
    /// How the root disk is made over the image (`qcow2`, `copy`, ...).
    #[serde(default)]
    pub disk_strategy: String,
    pub cpus: u32,
    pub memory_mib: u32,
    pub disk_gib: u32,
    pub image: String,
    /// The version of `image` the VM was made from, and boots from until
    /// it is deleted.
    #[serde(default)]
    pub image_version: u32,
    pub nat: bool,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
    pub pid: Option<u32>,
    /// Why the VM is in `error`, when it is.
    pub last_error: Option<String>,
    pub workspace: Option<WorkspaceInfo>,
    /// The template the VM was restored from (none: it booted cold).
    #[serde(default)]
    pub template: Option<String>,
    /// When the daemon deletes the VM (seconds since the Unix epoch), if
    /// it has a lifetime.
    #[serde(default)]
    pub expires_at: Option<i64>,
}

/// The workspace prepared in a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceInfo {
    pub mode: String,
    pub head: String,
    pub readonly: bool,
    pub source: String,
}

/// One version of a guest image in the catalog (`image list` shows every
/// version still on disk; `image build` answers with the one it made).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub name: String,
    /// The version's directory.
    pub path: String,
    pub rootfs_bytes: u64,
    pub kernel: String,
    /// Seconds since the Unix epoch.
    pub built_at: i64,
    /// Each build of a name is a new version, counting from 1; 0 is an
    /// image built before versions.
    #[serde(default)]
    pub version: u32,
    /// Whether new VMs get this version (the newest complete build).
    #[serde(default)]
    pub current: bool,
    /// The VMs made from this version (those the caller may see); it stays
    /// until the last of them is deleted.
    #[serde(default)]
    pub used_by: Vec<String>,
    /// The templates of this version new VMs are restored from, by shape
    /// (`2c-1024m-4g`: vCPUs, memory in MiB, disk in GiB).
    #[serde(default)]
    pub templates: Vec<String>,
    /// The Debian suite it was built from.
    #[serde(default)]
    pub suite: String,
    /// Packages added beyond the base set (`image build --include`).
    #[serde(default)]
    pub includes: Vec<String>,
    /// SHA-256 of the build script (`image build --script`), if any.
    #[serde(default)]
    pub script_sha256: Option<String>,
    /// `VM (IMAGE vVERSION)` for an image made by `image create --from-vm`.
    #[serde(default)]
    pub from_vm: Option<String>,
}

/// Where an operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpState {
    Running,
    Succeeded,
    Failed,
    /// Preempted by `vm kill` or `vm delete -f`.
    Cancelled,
}

/// One mutating request, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpInfo {
    pub id: String,
    pub kind: String,
    pub vm: Option<String>,
    pub state: OpState,
    pub phase: String,
    pub progress: u8,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub error: Option<String>,
}

/// Everything the CLI needs to run OpenSSH against a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshInfo {
    pub ip: String,
    pub user: String,
    pub identity_file: String,
    pub known_hosts: String,
    pub config_file: String,
    /// The VM's pinned host key, as a known_hosts line (for a caller that
    /// keeps its own known_hosts).
    #[serde(default)]
    pub known_hosts_line: String,
}

impl SshInfo {
    /// The OpenSSH options for this VM (see [`ssh_client_args`]).
    pub fn client_args(&self) -> Vec<String> {
        ssh_client_args(&self.identity_file, &self.known_hosts)
    }
}

/// Options every banger SSH invocation uses, the daemon's and the CLI's:
/// banger's key, banger's known_hosts, strict host key checking, no agent
/// or user config.
pub fn ssh_client_args(identity_file: &str, known_hosts: &str) -> Vec<String> {
    vec![
        "-F".into(),
        "/dev/null".into(),
        "-i".into(),
        identity_file.to_string(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        format!("UserKnownHostsFile={known_hosts}"),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        "LogLevel=ERROR".into(),
        "-o".into(),
        format!("KexAlgorithms={KEX_FIRST}"),
    ]
}

/// Key exchange to VMs: curve25519 first. The post-quantum hybrid (the
/// default) costs the guest a third of a second more per connection under
/// emulation, for traffic that never leaves the host.
pub const KEX_FIRST: &str = "^curve25519-sha256";

/// A listening socket in a guest, as `vm ports` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    /// `tcp` or `udp`.
    pub proto: String,
    pub port: u16,
    /// `NAME.vm:PORT` when the VM has a DNS record, else `IP:PORT`.
    pub endpoint: String,
    /// The owning process, when the guest reports it.
    pub process: String,
}
