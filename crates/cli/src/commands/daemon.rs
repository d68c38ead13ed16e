//! `banger daemon`: runs the daemon in the foreground until SIGINT/SIGTERM.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bangerd::layout::Layout;
use bangerd::vmm::accel::AccelChoice;
use bangerd::{Config, VmmChoice};
use clap::Args;

#[derive(Args)]
pub struct DaemonArgs {
    /// Persistent state: database, keys, VM disks.
    #[arg(long, default_value = "/var/lib/banger")]
    state_dir: PathBuf,
    /// Runtime files: socket, VMM control sockets, pid files.
    #[arg(long, default_value = "/run/banger")]
    run_dir: PathBuf,
    /// Built images (default: STATE_DIR/images).
    #[arg(long)]
    image_dir: Option<PathBuf>,
    /// The bridge the VMs' taps join.
    #[arg(long, default_value = "banger0")]
    bridge: String,
    /// The VMs' subnet; the bridge takes its first address.
    #[arg(long, default_value = "172.30.0.0/24")]
    subnet: String,
    /// auto, qemu or firecracker.
    #[arg(long, default_value = "auto")]
    vmm: String,
    /// QEMU accelerator: auto (KVM when it can boot a guest), kvm or tcg.
    #[arg(long, default_value = "auto")]
    accel: String,
    /// Seconds `vm create`/`vm start` wait for SSH.
    #[arg(long, default_value_t = 300)]
    boot_timeout: u64,
    /// Run image builds (mmdebstrap) in this network namespace, e.g.
    /// /proc/1/ns/net for a daemon started inside a test namespace.
    #[arg(long)]
    build_netns: Option<PathBuf>,
    /// Port of the `.vm` DNS server on the bridge address (0: off).
    #[arg(long, default_value_t = 53)]
    dns_port: u16,
    /// Members of this group may use the socket (when the group exists).
    #[arg(long, default_value = "banger")]
    socket_group: String,
    /// Each VM's VMM runs as uid and gid BASE + its slot, never as root
    /// (0: as the daemon's user).
    #[arg(long, default_value_t = 2_000_000_000)]
    vmm_uid_base: u32,
    /// Restore new VMs from templates (booted once per image version and
    /// VM shape, then saved): on, or off to boot every VM cold.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    templates: String,
    /// How new VMs' root disks are made: auto (the best the backend and the
    /// host support), qcow2, dm-snapshot, reflink or copy.
    #[arg(long, default_value = "auto")]
    disk_strategy: String,
    /// The Firecracker binary (default: `firecracker` on PATH).
    #[arg(long)]
    firecracker_bin: Option<PathBuf>,
    /// Run Firecracker under this `jailer` (chroot, as the VM's own uid).
    #[arg(long)]
    jailer_bin: Option<PathBuf>,
}

pub fn run(args: DaemonArgs, socket: &Path) -> anyhow::Result<i32> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BANGER_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if args.bridge.is_empty()
        || args.bridge.len() > 15
        || !args
            .bridge
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        anyhow::bail!(
            "invalid --bridge {:?}: use up to 15 characters of letters, digits, '-' and '_'",
            args.bridge
        );
    }
    let cfg = Config {
        layout: Layout::new(args.state_dir, args.run_dir, args.image_dir),
        bridge: args.bridge,
        subnet: args.subnet.parse()?,
        vmm: args.vmm.parse::<VmmChoice>().map_err(anyhow::Error::msg)?,
        accel: args
            .accel
            .parse::<AccelChoice>()
            .map_err(anyhow::Error::msg)?,
        boot_timeout: Duration::from_secs(args.boot_timeout),
        build_netns: args.build_netns,
        dns_port: args.dns_port,
        socket_group: args.socket_group,
        // Only root can hand a VMM another uid.
        vmm_uid_base: if unsafe { libc::geteuid() } == 0 {
            args.vmm_uid_base
        } else {
            0
        },
        templates: args.templates == "on",
        disk_strategy: args
            .disk_strategy
            .parse()
            .map_err(|e| anyhow::anyhow!("--disk-strategy: {e}"))?,
        firecracker: bangerd::vmm::firecracker::FirecrackerConfig {
            bin: args.firecracker_bin,
            jailer: args.jailer_bin,
        },
    };
    if socket != cfg.layout.socket()
        && std::env::var_os("BANGER_SOCKET").is_none()
        && socket != Path::new(banger_api::DEFAULT_SOCKET)
    {
        tracing::warn!("--socket is ignored by the daemon; it listens on RUN_DIR/banger.sock");
    }
    // A backend named by --vmm that cannot run here stops the daemon now,
    // with the reason, rather than at the first `vm create`.
    bangerd::check_vmm_choice(&cfg).map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async {
        let listener = bangerd::bind(&cfg)?;
        bangerd::run(listener, cfg, shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    Ok(0)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("shutting down; VMs keep running and are re-adopted at the next start");
}
