//! The daemon served in-process on a temporary socket (as root: inside a
//! network namespace of its own), stopped and removed on drop.

use std::path::PathBuf;
use std::time::Duration;

use banger_api::{client, ApiError, Request};
use bangerd::layout::Layout;
use bangerd::server::Limits;
use bangerd::vmm::accel::AccelChoice;
use bangerd::Config;

use super::{is_root, NetNs};

pub struct Daemon {
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub state: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// As root the daemon sets up its bridge at start: it gets a namespace
    /// of its own so the host's network is never touched.
    _ns: Option<NetNs>,
}

impl Daemon {
    /// A daemon with the production limits.
    pub fn start(tag: &str) -> Daemon {
        Daemon::start_with(tag, Limits::default())
    }

    /// A daemon whose socket server uses `limits`.
    pub fn start_with(tag: &str, limits: Limits) -> Daemon {
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
            templates: true,
            disk_strategy: Default::default(),
            firecracker: Default::default(),
        };
        let socket = cfg.layout.socket();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ns = is_root().then(|| NetNs::create(tag));
        let ns_name = ns.as_ref().map(|n| n.name.clone());
        let thread = std::thread::spawn(move || {
            if let Some(name) = ns_name {
                let handle = NetNs { name };
                handle.enter();
                std::mem::forget(handle); // the outer value removes it
            }
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let listener = bangerd::bind(&cfg).unwrap();
                ready_tx.send(()).unwrap();
                let run = bangerd::run(listener, cfg, async {
                    let _ = rx.await;
                });
                bangerd::server::with_limits(limits, run).await.unwrap();
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
        for _ in 0..500 {
            if d.call::<serde_json::Value>(Request::Ping).is_ok() {
                return d;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon did not answer");
    }

    pub fn call<T: serde::de::DeserializeOwned>(&self, req: Request) -> Result<T, ApiError> {
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
