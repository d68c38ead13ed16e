//! The test bed: a daemon's directories in a temporary folder, a fake
//! image, the fake host, and a way to start (and restart) the service on
//! them; plus the leak check a user would make.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use banger_api::{VmSpec, VmState};

use crate::host::fake::World;
use crate::layout::Layout;
use crate::store::Store;
use crate::vm::service::{Config, VmmChoice};
use crate::vm::{VmRecord, VmService};
use crate::vmm::accel::AccelChoice;

pub const BRIDGE: &str = "banger-t0";

pub struct Bed {
    _dir: tempfile::TempDir,
    pub world: World,
    pub cfg: Config,
    /// A git repo with a commit and an uncommitted file, for workspaces.
    pub repo: PathBuf,
}

impl Bed {
    /// A bed whose disks play `strategy` (see `host::fake::FakeDisk`).
    pub fn with_disk(strategy: crate::disk::Strategy) -> Bed {
        let bed = Bed::new();
        bed.world.use_disk(strategy);
        bed
    }

    pub fn new() -> Bed {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path().join("state"), dir.path().join("run"), None);
        crate::image::catalog::install(
            &layout,
            crate::image::DEFAULT_IMAGE,
            crate::image::catalog::fake_build("v1"),
        )
        .expect("fake image");
        std::fs::create_dir_all(layout.ssh_dir()).expect("ssh dir");
        std::fs::write(
            crate::guest::ssh::pub_path(&layout.client_key()),
            "ssh-ed25519 AAAAclient banger\n",
        )
        .expect("client key");
        std::fs::write(layout.known_hosts(), "").expect("known_hosts");
        let repo = dir.path().join("repo");
        make_repo(&repo);
        Bed {
            _dir: dir,
            world: World::default(),
            cfg: Config {
                layout,
                bridge: BRIDGE.into(),
                subnet: "10.99.0.0/24".parse().expect("subnet"),
                vmm: VmmChoice::Auto,
                accel: AccelChoice::Tcg,
                boot_timeout: Duration::from_secs(5),
                build_netns: None,
                dns_port: 0,
                socket_group: "banger".into(),
                vmm_uid_base: 2_000_000_000,
                templates: true,
                disk_strategy: Default::default(),
                firecracker: Default::default(),
            },
            repo,
        }
    }

    /// A daemon on the bed: a fresh service on the same database and host,
    /// as after a restart.
    pub fn daemon(&self) -> Arc<VmService> {
        let store = Store::open(&self.cfg.layout.database()).expect("store");
        VmService::new(self.cfg.clone(), self.world.host(), Arc::new(store))
    }

    /// Names of the VMs in the store.
    pub fn vm_names(&self) -> BTreeSet<String> {
        self.daemon()
            .store
            .list_vms()
            .expect("list")
            .into_iter()
            .map(|v| v.name)
            .collect()
    }

    /// What a user would call leaked: a host resource or file of a VM that
    /// is gone, or that a VM in its state must not have. A VM in `error`
    /// may keep what its failed step left until `vm delete`.
    pub fn leaks(&self) -> Vec<String> {
        let vms: Vec<VmRecord> = self.daemon().store.list_vms().expect("list");
        let find = |name: &str| vms.iter().find(|v| v.name == name);
        let mut leaks = Vec::new();
        let tolerant = |v: &VmRecord| v.state == VmState::Error;
        for (pid, p) in self.world.live_procs() {
            match find(&p.name) {
                Some(v) if tolerant(v) => {}
                Some(v) if v.state == VmState::Running && v.runtime.map(|r| r.pid) == Some(pid) => {
                }
                _ => leaks.push(format!("VMM process {pid} of {}", p.name)),
            }
        }
        for v in vms.iter().filter(|v| v.state == VmState::Running) {
            if !self.world.live_procs().values().any(|p| p.name == v.name) {
                leaks.push(format!("{} is running without a VMM", v.name));
            }
        }
        for tap in self.world.taps() {
            match vms.iter().find(|v| v.tap == tap) {
                Some(v) if tolerant(v) || v.state == VmState::Running => {}
                _ => leaks.push(format!("tap {tap}")),
            }
        }
        for (_, rule) in self.world.rules() {
            let Some(vm) = crate::hostnat::rules::vm_of(&rule) else {
                continue;
            };
            if !find(&vm).is_some_and(|v| v.nat) {
                leaks.push(format!("NAT rule of {vm}: {rule}"));
            }
        }
        for v in vms.iter().filter(|v| v.nat && !tolerant(v)) {
            let n = self
                .world
                .rules()
                .iter()
                .filter(|(_, r)| crate::hostnat::rules::vm_of(r).as_deref() == Some(&v.name))
                .count();
            if n != 0 && n != 3 {
                leaks.push(format!("{} has {n} NAT rules, not 3", v.name));
            }
        }
        let l = &self.cfg.layout;
        for (parent, ok) in [
            (l.state_dir.join("vms"), &|_: &VmRecord| true),
            (l.run_dir.join("vms"), &|v: &VmRecord| {
                v.state != VmState::Stopped
            }),
        ] as [(PathBuf, &dyn Fn(&VmRecord) -> bool); 2]
        {
            for e in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !find(&name).is_some_and(ok) {
                    leaks.push(format!("directory {}", e.path().display()));
                }
            }
        }
        for dev in self.world.devices() {
            let owner = dev
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match find(&owner) {
                Some(v) if tolerant(v) || v.state == VmState::Running => {}
                _ => leaks.push(format!("disk device of {owner} ({})", dev.display())),
            }
        }
        let known = std::fs::read_to_string(l.known_hosts()).unwrap_or_default();
        for line in known.lines() {
            let owner = line
                .split_whitespace()
                .nth(3)
                .and_then(|m| m.strip_prefix("banger-vm:"));
            if let Some(owner) = owner.filter(|o| find(o).is_none()) {
                leaks.push(format!("known_hosts line of {owner}"));
            }
        }
        leaks
    }
}

pub fn spec(name: &str, nat: bool) -> VmSpec {
    VmSpec {
        name: name.into(),
        cpus: 1,
        memory_mib: 512,
        disk_gib: 1,
        image: "default".into(),
        nat,
        authorized_keys: Vec::new(),
        cold: false,
        disk_strategy: None,
        ..Default::default()
    }
}

fn make_repo(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("repo dir");
    let git = |args: &[&str]| {
        let ok = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(ok, "git {args:?}");
    };
    git(&["init", "-q"]);
    std::fs::write(dir.join("README"), "hello\n").expect("write");
    git(&["add", "README"]);
    git(&["commit", "-q", "-m", "first"]);
    std::fs::write(dir.join("notes.txt"), "uncommitted\n").expect("write");
}
