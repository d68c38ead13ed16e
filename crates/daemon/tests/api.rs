//! The daemon served in-process on a temporary socket, driven through the
//! real client: bad input is refused before any side effect. Needs no
//! privilege (nothing here touches the network or boots a VM).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_api::{client, ErrorCode, ImageInfo, Request, VmInfo, VmSpec};
use bangerd::layout::Layout;
use bangerd::vmm::accel::AccelChoice;
use bangerd::Config;

mod common;

struct Daemon {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    state: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// As root the daemon sets up its bridge at start: it gets a namespace
    /// of its own so the host's network is never touched.
    _ns: Option<common::NetNs>,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let cfg = Config {
            layout: Layout::new(state.clone(), dir.path().join("run"), None),
            bridge: "banger-test0".into(),
            subnet: "10.77.0.0/24".parse().unwrap(),
            vmm: "qemu".parse().unwrap(),
            accel: AccelChoice::Tcg,
            boot_timeout: Duration::from_secs(5),
            build_netns: None,
            dns_port: 0,
            socket_group: "banger".into(),
            vmm_uid_base: 2_000_000_000,
        };
        let socket = cfg.layout.socket();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ns = common::is_root().then(|| common::NetNs::create("api"));
        let ns_name = ns.as_ref().map(|n| n.name.clone());
        let thread = std::thread::spawn(move || {
            if let Some(name) = ns_name {
                let handle = common::NetNs { name };
                handle.enter();
                std::mem::forget(handle); // the outer value removes it
            }
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let listener = bangerd::bind(&cfg).unwrap();
                ready_tx.send(()).unwrap();
                bangerd::run(listener, cfg, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let d = Daemon {
            _dir: dir,
            socket,
            state,
            stop: Some(tx),
            thread: Some(thread),
            _ns: ns,
        };
        // `run` prepares keys before serving; wait for the first answer.
        for _ in 0..300 {
            if client::call::<serde_json::Value>(&d.socket, &Request::Ping, |_| {}).is_ok() {
                return d;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon did not answer");
    }

    fn call<T: serde::de::DeserializeOwned>(
        &self,
        req: Request,
    ) -> Result<T, banger_api::ApiError> {
        client::call(&self.socket, &req, |_| {})
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn spec(name: &str, image: &str) -> VmSpec {
    VmSpec {
        name: name.into(),
        cpus: 1,
        memory_mib: 512,
        disk_gib: 4,
        image: image.into(),
        nat: false,
        authorized_keys: Vec::new(),
    }
}

fn vm_dirs(state: &Path) -> usize {
    std::fs::read_dir(state.join("vms"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let d = Daemon::start();
    let vms: Vec<VmInfo> = d.call(Request::VmList).unwrap();
    assert!(vms.is_empty());

    let e = d
        .call::<VmInfo>(Request::VmCreate {
            spec: spec("Bad_Name", "default"),
        })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidName);

    let e = d
        .call::<VmInfo>(Request::VmCreate {
            spec: spec("dev", "nosuch"),
        })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(
        e.message.contains("banger image build nosuch"),
        "{}",
        e.message
    );

    let mut big = spec("dev", "default");
    big.cpus = 0;
    assert_eq!(
        d.call::<VmInfo>(Request::VmCreate { spec: big })
            .unwrap_err()
            .code,
        ErrorCode::InvalidArgument
    );

    for req in [
        Request::VmShow {
            name: "nope".into(),
        },
        Request::VmStart {
            name: "nope".into(),
        },
        Request::VmStop {
            name: "nope".into(),
        },
        Request::VmDelete {
            name: "nope".into(),
            force: true,
        },
        Request::VmSsh {
            name: "nope".into(),
        },
    ] {
        let e = d.call::<serde_json::Value>(req).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound, "{}", e.message);
    }
    let e = d
        .call::<serde_json::Value>(Request::VmKill {
            name: "dev".into(),
            signal: "BOGUS".into(),
        })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument);

    let e = d
        .call::<serde_json::Value>(Request::ImageRm {
            name: "default".into(),
        })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);

    let vms: Vec<VmInfo> = d.call(Request::VmList).unwrap();
    assert!(vms.is_empty(), "a refused request left a VM: {vms:?}");
    assert_eq!(vm_dirs(&d.state), 0, "a refused request left files");
    let images: Vec<ImageInfo> = d.call(Request::ImageList).unwrap();
    assert!(images.is_empty());
}

#[test]
fn daemon_owns_keys_and_ssh_config_with_tight_modes() {
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start();
    let v: serde_json::Value = d.call(Request::SshConfig).unwrap();
    let text = v["text"].as_str().unwrap();
    assert!(text.contains("Host *.vm"));
    assert!(text.contains("StrictHostKeyChecking yes"));
    let key = d.state.join("ssh/id_ed25519");
    assert!(key.exists());
    assert_eq!(
        std::fs::metadata(d.state.join("ssh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777,
        0o660
    );
    let ops: Vec<banger_api::OpInfo> = d.call(Request::OpList).unwrap();
    assert!(
        ops.iter().all(|o| o.kind != "vm_create"),
        "refused creates must not become operations"
    );
}

#[test]
fn a_malformed_request_gets_an_error_not_a_hangup() {
    use std::io::{BufRead, BufReader, Write};
    let d = Daemon::start();
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    s.write_all(b"{\"op\":\"no_such_thing\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    assert!(line.contains("malformed request"), "{line}");
}
