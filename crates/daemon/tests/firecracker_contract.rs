//! Contract tests of the Firecracker backend: the real backend spawns a
//! stand-in `firecracker` and drives it over HTTP on a Unix socket, served
//! by a fake that checks every request against Firecracker's own API
//! description (`shared/reference/firecracker-api.yaml`, v1.16.1) and its
//! rules of order. Create, stop, kill, restart, the workspace drive swap,
//! snapshot and restore; then every call failing in turn: each failure is
//! a clear error and leaves no process behind. Without the file (or
//! without `perl` for the stand-in's sleep) each test says why it skips.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod fakefc;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bangerd::layout::Layout;
use bangerd::vmm::firecracker::{Firecracker, FirecrackerConfig, PLACEHOLDER};
use bangerd::vmm::{BootDrives, DiskFormat, Drive, LaunchSpec, Vmm};
use fakefc::contract::Contract;
use fakefc::server::FakeFc;

fn contract() -> Option<Arc<Contract>> {
    if bangerd::cmd::which("perl").is_none() {
        eprintln!("skipped: the stand-in firecracker sleeps in perl, which is not installed");
        return None;
    }
    match Contract::load() {
        Ok(c) => Some(Arc::new(c)),
        Err(why) => {
            eprintln!("skipped: Firecracker's API description {why}");
            None
        }
    }
}

struct Bed {
    dir: tempfile::TempDir,
    fc: FakeFc,
    backend: Firecracker,
    spec: LaunchSpec,
}

fn drive(path: PathBuf, readonly: bool, serial: &str) -> Drive {
    Drive {
        path,
        format: DiskFormat::Raw,
        readonly,
        serial: serial.into(),
    }
}

fn bed(contract: &Arc<Contract>, broken: bool) -> Bed {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path().join("state"), dir.path().join("run"), None);
    let (vm_dir, run_dir) = (layout.vm_dir("dev"), layout.vm_run_dir("dev"));
    std::fs::create_dir_all(&vm_dir).unwrap();
    std::fs::create_dir_all(&run_dir).unwrap();
    let image = layout.image_version("default", 1);
    std::fs::create_dir_all(&image.dir).unwrap();
    for f in [image.vmlinux(), image.initrd()] {
        std::fs::write(f, b"kernel").unwrap();
    }
    std::fs::write(vm_dir.join("root.img"), b"root").unwrap();
    std::fs::write(layout.vm_config_drive("dev"), b"config").unwrap();
    let fc = FakeFc::start(dir.path(), contract.clone());
    let cfg = FirecrackerConfig {
        bin: Some(fc.bin(broken)),
        jailer: None,
    };
    let backend = Firecracker::new(cfg, layout.clone(), dir.path().join("accel-probe"));
    let drives = backend.drive_plan(BootDrives {
        root: drive(vm_dir.join("root.img"), false, "banger-root"),
        config: drive(layout.vm_config_drive("dev"), true, "banger-config"),
        workspace: None,
    });
    let spec = LaunchSpec {
        name: "dev".into(),
        kernel: image.vmlinux(),
        initrd: image.initrd(),
        cmdline: backend.kernel_cmdline("dev"),
        drives,
        tap: "banger-tap1".into(),
        mac: "02:62:67:00:00:01".into(),
        cpus: 2,
        memory_mib: 512,
        console_log: layout.vm_console_log("dev"),
        pid_file: layout.vm_pid_file("dev"),
        control_socket: layout.vm_control_socket("dev"),
        run_as: None,
        stderr_log: layout.vm_stderr_log("dev"),
        template: false,
        restore_from: None,
    };
    Bed {
        dir,
        fc,
        backend,
        spec,
    }
}

impl Bed {
    fn placeholder(&self) -> PathBuf {
        self.dir.path().join("state/vms/dev").join(PLACEHOLDER)
    }

    fn control(&self) -> &Path {
        &self.spec.control_socket
    }

    /// The stand-in's pid (written before it links the socket).
    fn pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.path().join("fc.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn assert_clean(&self) {
        let v = self.fc.violations();
        assert!(v.is_empty(), "requests broke the contract: {v:#?}");
    }
}

/// Whether a process `pid` exists at all (a reaped one does not).
fn exists(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

fn wait_gone(backend: &Firecracker, handle: &bangerd::vmm::RuntimeHandle) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !backend.is_alive(handle, "dev") && !exists(handle.pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

const BOOT_CALLS: [&str; 10] = [
    "PUT /logger",
    "PUT /machine-config",
    "PUT /boot-source",
    "PUT /drives/root",
    "PUT /drives/config",
    "PUT /drives/workspace",
    "PUT /drives/import",
    "PUT /network-interfaces/eth0",
    "PUT /actions",
    "",
];

#[test]
fn the_swagger_file_is_read_whole() {
    let Some(c) = contract() else { return };
    assert_eq!(c.version(), "1.16.1");
    let (m, params) = c.find("PATCH", "/drives/workspace").unwrap();
    assert_eq!(m.template, "/drives/{drive_id}");
    assert_eq!(params, [("drive_id".to_string(), "workspace".to_string())]);
    assert_eq!(c.success(&m), 204);
    let bad = serde_json::json!({"drive_id": "workspace", "path_on_host": 7});
    assert!(c
        .check_body(&m, &params, Some(&bad))
        .unwrap_err()
        .contains("not of type string"));
    let (m, p) = c.find("PUT", "/actions").unwrap();
    let e = c
        .check_body(&m, &p, Some(&serde_json::json!({"action_type": "Reboot"})))
        .unwrap_err();
    assert!(e.contains("not one of"), "{e}");
    assert!(c.find("PUT", "/nonsense").is_err());
}

#[test]
fn create_stop_and_restart_follow_the_contract() {
    let Some(c) = contract() else { return };
    let b = bed(&c, false);
    let handle = b.backend.launch(&b.spec).unwrap();
    assert!(b.backend.is_alive(&handle, "dev"));
    assert!(!b.backend.is_alive(&handle, "de"), "another VM's name");
    assert!(b.backend.responds(b.control()));
    let lines = b.fc.call_lines();
    assert_eq!(lines[..9], BOOT_CALLS[..9], "{lines:#?}");
    let calls = b.fc.calls();
    let boot = calls.iter().find(|c| c.path == "/boot-source").unwrap();
    let args = boot.body.as_ref().unwrap()["boot_args"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(args.contains("banger.drive.banger-ws=/dev/vdc"), "{args}");
    assert!(
        args.contains("banger.drive.banger-ws-import=/dev/vdd"),
        "{args}"
    );
    let root = b.fc.drive("root").unwrap();
    assert_eq!(root["is_root_device"], true);
    assert_eq!(root["is_read_only"], false);
    let slot = b.fc.drive("workspace").unwrap();
    assert_eq!(slot["is_read_only"], true);
    assert_eq!(slot["path_on_host"], b.placeholder().display().to_string());
    assert_eq!(
        std::fs::metadata(b.placeholder()).unwrap().len(),
        512,
        "one sector"
    );
    let net = calls
        .iter()
        .find(|c| c.path == "/network-interfaces/eth0")
        .unwrap();
    assert_eq!(net.body.as_ref().unwrap()["host_dev_name"], "banger-tap1");
    // Stop: Ctrl-Alt-Del, and the guest's reboot ends Firecracker.
    b.backend.request_shutdown(b.control()).unwrap();
    assert!(
        wait_gone(&b.backend, &handle),
        "Firecracker outlived Ctrl-Alt-Del"
    );
    b.backend.release("dev").unwrap();
    // Restart: a new process, configured from scratch.
    b.fc.clear_calls();
    let again = b.backend.launch(&b.spec).unwrap();
    assert_ne!(again.pid, handle.pid);
    assert_eq!(b.fc.call_lines()[..9], BOOT_CALLS[..9]);
    b.backend.signal(&again, libc::SIGKILL).unwrap();
    assert!(wait_gone(&b.backend, &again));
    b.assert_clean();
}

#[test]
fn kill_ends_the_process() {
    let Some(c) = contract() else { return };
    let b = bed(&c, false);
    let handle = b.backend.launch(&b.spec).unwrap();
    b.backend.signal(&handle, libc::SIGTERM).unwrap();
    assert!(
        wait_gone(&b.backend, &handle),
        "the VMM outlived the signal"
    );
    b.backend.signal(&handle, libc::SIGKILL).unwrap(); // gone is success
    b.assert_clean();
}

#[test]
fn the_workspace_slot_is_swapped_in_and_out() {
    let Some(c) = contract() else { return };
    let b = bed(&c, false);
    let handle = b.backend.launch(&b.spec).unwrap();
    let image = b.dir.path().join("state/vms/dev/workspace.img");
    std::fs::write(&image, b"repo").unwrap();
    b.backend
        .attach_drive(
            b.control(),
            "workspace",
            &drive(image.clone(), true, "banger-ws"),
        )
        .unwrap();
    assert_eq!(
        b.fc.drive("workspace").unwrap()["path_on_host"],
        image.display().to_string()
    );
    b.backend.detach_drive(b.control(), "workspace").unwrap();
    assert_eq!(
        b.fc.drive("workspace").unwrap()["path_on_host"],
        b.placeholder().display().to_string()
    );
    b.fc.fail("PATCH", "/drives/import", 400);
    let e = b
        .backend
        .attach_drive(
            b.control(),
            "import",
            &drive(image, true, "banger-ws-import"),
        )
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "VMM control channel: Firecracker refused PATCH /drives/import (400): injected failure"
    );
    b.backend.signal(&handle, libc::SIGKILL).unwrap();
    assert!(wait_gone(&b.backend, &handle));
    b.assert_clean();
}

#[test]
fn snapshot_then_restore_into_a_new_process() {
    let Some(c) = contract() else { return };
    let b = bed(&c, false);
    let handle = b.backend.launch(&b.spec).unwrap();
    let snap = b.dir.path().join("state/templates/default");
    b.backend.snapshot(b.control(), &snap).unwrap();
    assert!(b.fc.is_paused(), "a snapshot leaves the VM paused");
    assert!(snap.join("vmstate").exists() && snap.join("memory").exists());
    b.backend.signal(&handle, libc::SIGKILL).unwrap();
    assert!(wait_gone(&b.backend, &handle));
    b.fc.clear_calls();
    let mut spec = b.spec.clone();
    let new_root = b.dir.path().join("state/vms/dev/root2.img");
    std::fs::write(&new_root, b"root").unwrap();
    spec.drives[0].path = new_root.clone();
    let restored = b.backend.restore(&spec, &snap).unwrap();
    assert!(b.backend.is_alive(&restored, "dev"));
    assert_eq!(
        b.fc.call_lines(),
        [
            "PUT /logger",
            "PUT /snapshot/load",
            "PATCH /drives/root",
            "PATCH /drives/config",
            "PATCH /drives/workspace",
            "PATCH /drives/import",
            "PATCH /vm"
        ]
    );
    let load =
        b.fc.calls()
            .into_iter()
            .find(|c| c.path == "/snapshot/load")
            .unwrap();
    let body = load.body.unwrap();
    assert_eq!(body["network_overrides"][0]["host_dev_name"], "banger-tap1");
    assert_eq!(
        b.fc.drive("root").unwrap()["path_on_host"],
        new_root.display().to_string()
    );
    assert!(!b.fc.is_paused(), "restored VMs run");
    b.backend.signal(&restored, libc::SIGKILL).unwrap();
    assert!(wait_gone(&b.backend, &restored));
    b.assert_clean();
}

/// Every call of create, and of restore, failing in turn: a clear error
/// naming the call, and no process left.
#[test]
fn every_failed_call_is_a_clear_error_and_leaves_no_process() {
    let Some(c) = contract() else { return };
    let restore_calls = [
        "PUT /logger",
        "PUT /snapshot/load",
        "PATCH /drives/root",
        "PATCH /vm",
    ];
    for (restore, call) in BOOT_CALLS[..9]
        .iter()
        .map(|c| (false, *c))
        .chain(restore_calls.iter().map(|c| (true, *c)))
    {
        let b = bed(&c, false);
        let snap = b.dir.path().join("snap");
        if restore {
            let h = b.backend.launch(&b.spec).unwrap();
            b.backend.snapshot(b.control(), &snap).unwrap();
            b.backend.signal(&h, libc::SIGKILL).unwrap();
            assert!(wait_gone(&b.backend, &h));
        }
        let (method, path) = call.split_once(' ').unwrap();
        b.fc.fail(method, path, 400);
        let result = if restore {
            b.backend.restore(&b.spec, &snap)
        } else {
            b.backend.launch(&b.spec)
        };
        let e = result.unwrap_err().to_string();
        assert_eq!(
            e,
            format!("VMM control channel: Firecracker refused {call} (400): injected failure"),
            "restore: {restore}"
        );
        let pid = b.pid();
        assert!(!exists(pid), "{call} failed and pid {pid} lives on");
        b.assert_clean();
    }
    // Stop and snapshot failing: an error the user can read; the VM runs.
    let b = bed(&c, false);
    let h = b.backend.launch(&b.spec).unwrap();
    b.fc.fail("PUT", "/actions", 400);
    let e = b
        .backend
        .request_shutdown(b.control())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("refused PUT /actions (400): injected failure"),
        "{e}"
    );
    b.fc.fail("PUT", "/snapshot/create", 400);
    let e = b
        .backend
        .snapshot(b.control(), &b.dir.path().join("s"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("refused PUT /snapshot/create (400)"), "{e}");
    assert!(b.backend.is_alive(&h, "dev"));
    b.backend.signal(&h, libc::SIGKILL).unwrap();
    assert!(wait_gone(&b.backend, &h));
    b.assert_clean();
}

#[test]
fn a_firecracker_that_cannot_start_says_why() {
    let Some(c) = contract() else { return };
    let b = bed(&c, true);
    let e = b.backend.launch(&b.spec).unwrap_err().to_string();
    assert_eq!(
        e,
        "the VMM did not start: firecracker: Error: cannot open /dev/kvm: No such file or directory"
    );
    assert!(b.fc.calls().is_empty());
}
