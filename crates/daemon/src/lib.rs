//! bangerd: the banger daemon as a library. [`run`] serves the API on a
//! Unix socket until `shutdown` resolves; `banger daemon` calls it, and
//! tests run it in-process on a temporary socket.

pub mod cmd;
pub mod disk;
pub mod dns;
mod errors;
pub mod ext4;
pub mod guest;
pub mod host;
pub mod hosterror;
pub mod hostnat;
pub mod hostnet;
pub mod image;
pub mod layout;
pub mod lock;
pub mod logcap;
pub mod opstate;
pub mod pathio;
pub mod server;
pub mod store;
pub mod template;
pub mod vm;
pub mod vmm;
pub mod workspace;

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

pub use vm::service::{Config, VmmChoice};
pub use vm::VmService;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Guest(#[from] guest::GuestError),
    #[error(transparent)]
    Lock(#[from] lock::LockError),
}

/// The daemon's socket, with the locks that make it the only daemon on
/// its state and run directories; held until the daemon ends.
#[derive(Debug)]
pub struct Listener {
    socket: tokio::net::UnixListener,
    _locks: [lock::DirLock; 2],
}

fn io_err(what: &'static str, path: &std::path::Path, source: std::io::Error) -> DaemonError {
    DaemonError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// Largest console log kept per VM.
pub const CONSOLE_LOG_MAX: u64 = 2 << 20;

/// Takes the state and run directories (a second daemon on either is
/// refused, naming the first one's pid), then binds the socket at
/// `layout.socket()`: mode 0660, group `--socket-group` (`banger`) when
/// that group exists. A
/// stale socket is replaced: under the locks, nobody else can be binding.
pub fn bind(cfg: &Config) -> Result<Listener, DaemonError> {
    let path = cfg.layout.socket();
    let l = &cfg.layout;
    // 0711: unprivileged VMMs reach their own files by name, list nothing.
    layout::ensure_dir(&l.state_dir, 0o711).map_err(|e| io_err("creating", &l.state_dir, e))?;
    layout::ensure_dir(&l.run_dir, 0o755).map_err(|e| io_err("creating", &l.run_dir, e))?;
    let locks = [
        lock::lock_dir(&l.state_dir, "daemon.lock")?,
        lock::lock_dir(&l.run_dir, "daemon.lock")?,
    ];
    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
        return Err(io_err(
            "another daemon answers on",
            &path,
            std::io::Error::from(std::io::ErrorKind::AddrInUse),
        ));
    }
    let _ = std::fs::remove_file(&path);
    let listener =
        tokio::net::UnixListener::bind(&path).map_err(|e| io_err("binding", &path, e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| io_err("chmod", &path, e))?;
    if let Some(gid) = group_id(&cfg.socket_group) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
            io_err(
                "socket path",
                &path,
                std::io::ErrorKind::InvalidInput.into(),
            )
        })?;
        // SAFETY: `c` is a valid NUL-terminated path; uid -1 keeps the owner.
        let rc = unsafe { libc::chown(c.as_ptr(), u32::MAX, gid) };
        if rc != 0 {
            tracing::warn!(
                "chgrp banger {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(Listener {
        socket: listener,
        _locks: locks,
    })
}

/// Refuses a backend named by `--vmm` that cannot run on this host, with
/// the one-line reason (`banger doctor` says the same). `--vmm auto` is
/// never refused here: it falls back to QEMU.
pub fn check_vmm_choice(cfg: &Config) -> Result<(), String> {
    let VmmChoice::Named(name) = &cfg.vmm else {
        return Ok(());
    };
    let backends = vmm::system_backends(cfg);
    let Some(backend) = backends.iter().find(|b| b.name() == name) else {
        return Err(format!(
            "--vmm {name}: not part of this build; use --vmm auto"
        ));
    };
    match backend.unusable_reason() {
        Some(why) => Err(format!("--vmm {name}: {why}")),
        None => Ok(()),
    }
}

fn group_id(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then(|| f.nth(1)?.parse().ok())?
    })
}

/// Creates the bridge and serves the `.vm` zone on its address. Failures
/// are logged: VMs still work by IP without DNS.
async fn start_dns(svc: &Arc<VmService>) -> Option<tokio::task::JoinHandle<()>> {
    let cfg = &svc.cfg;
    let (net, bridge, subnet) = (svc.host.net.clone(), cfg.bridge.clone(), cfg.subnet);
    let bridged = vm::service::blocking(move || net.ensure_bridge(&bridge, &subnet)).await;
    if let Err(e) = bridged {
        tracing::warn!(
            "cannot set up bridge {}: {e}; DNS for .vm is off",
            cfg.bridge
        );
        return None;
    }
    if let Err(e) = svc.ensure_isolation(false).await {
        tracing::warn!("{e}");
    }
    if cfg.dns_port == 0 {
        return None;
    }
    let gateway = cfg.subnet.gateway();
    let upstreams = dns::upstream::from_resolv_conf(
        std::path::Path::new("/etc/resolv.conf"),
        &[std::net::IpAddr::V4(gateway)],
    );
    let store = svc.store.clone();
    let resolve: dns::Resolver = Arc::new(move |name: &str| {
        store
            .get_vm(name)
            .ok()
            .flatten()
            .and_then(|vm| vm.ip.parse().ok())
    });
    let addr = std::net::SocketAddr::new(gateway.into(), cfg.dns_port);
    match dns::serve(addr, resolve, upstreams).await {
        Ok(handle) => {
            svc.dns_running
                .store(true, std::sync::atomic::Ordering::Relaxed);
            dns::resolved::register(&cfg.bridge, gateway);
            Some(handle)
        }
        Err(e) => {
            tracing::warn!("cannot serve DNS on {addr}: {e}; `NAME.vm` names will not resolve");
            None
        }
    }
}

/// Prepares state (directories, keys, database), reconciles the host with
/// it, then serves `listener` until `shutdown`. VMs keep running after the
/// daemon exits; the next daemon re-adopts them.
pub async fn run(
    listener: Listener,
    cfg: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let l = &cfg.layout;
    layout::ensure_dir(&l.state_dir, 0o711).map_err(|e| io_err("creating", &l.state_dir, e))?;
    layout::ensure_dir(&l.run_dir.join("vms"), 0o711)
        .map_err(|e| io_err("creating", &l.run_dir, e))?;
    layout::ensure_dir(&l.state_dir.join("vms"), 0o711)
        .map_err(|e| io_err("creating", &l.state_dir, e))?;
    guest::ssh::ensure_client_key(l)?;
    guest::ssh::write_ssh_config(l)?;
    let store = Arc::new(store::Store::open(&l.database())?);
    let host = host::system::host(&cfg);
    let svc = VmService::new(cfg, host, store);
    let _dns = start_dns(&svc).await;
    vm::reconcile::reconcile(&svc).await;
    svc.probe_backends_early();
    let housekeeping = {
        let svc = svc.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                svc.refresh_all().await;
                svc.expire_due().await;
                svc.cap_console_logs(CONSOLE_LOG_MAX);
            }
        })
    };
    tracing::info!(socket = %svc.layout().socket().display(), "banger daemon ready");
    server::serve(listener.socket, svc, shutdown).await;
    housekeeping.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(state: std::path::PathBuf, run: std::path::PathBuf) -> Config {
        Config {
            layout: layout::Layout::new(state, run, None),
            bridge: "banger-t1".into(),
            subnet: "10.98.0.0/24".parse().expect("subnet"),
            vmm: VmmChoice::Auto,
            accel: vmm::accel::AccelChoice::Tcg,
            boot_timeout: Duration::from_secs(5),
            build_netns: None,
            dns_port: 0,
            socket_group: "banger".into(),
            vmm_uid_base: 2_000_000_000,
            templates: true,
            disk_strategy: Default::default(),
            firecracker: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_second_daemon_on_the_same_state_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first =
            bind(&config(dir.path().join("state"), dir.path().join("run1"))).expect("first daemon");
        let second = bind(&config(dir.path().join("state"), dir.path().join("run2")))
            .expect_err("second daemon on the same state directory");
        let msg = second.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(
            !dir.path().join("run2/banger.sock").exists(),
            "the refused daemon bound a socket"
        );
        drop(first);
        // Another test thread that forks in the meantime gives its child a
        // copy of every descriptor, the lock's too, until the child execs
        // (a few milliseconds): the lock is free once that copy closes.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let again = loop {
            match bind(&config(dir.path().join("state"), dir.path().join("run2"))) {
                Err(DaemonError::Lock(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other,
            }
        };
        again.expect("after the first");
    }
}
