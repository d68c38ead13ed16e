//! The baseline for create-to-SSH: `qemu-system-x86_64` started by hand
//! with the same kernel, initrd and root filesystem (a qcow2 overlay), a
//! config drive of our own and a tap on the bench's bridge, timed until
//! `ssh true` answers. Like the daemon, it tries SSH once the image's sshd
//! says on the console that it listens (and every 2 s until then). What
//! banger adds on top of this is its overhead.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use bangerd::guest::configdrive;
use bangerd::guest::console::ConsoleWatch;
use bangerd::layout::ImagePaths;
use bangerd::vmm::KernelFormat;

use crate::smoke::Env;

const TAP: &str = "bench-hand";
/// An address no bench VM gets (slots are taken from the bottom).
const IP: &str = "172.30.0.250";
const MAC: &str = "02:62:65:6e:63:68";

/// Files the hand-made VM boots with.
struct Kit {
    dir: PathBuf,
    key: PathBuf,
}

fn run(argv: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(argv[0]).args(&argv[1..]).output()?;
    ensure!(
        out.status.success(),
        "{}: {}",
        argv.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Keys and the config drive (made by the daemon's own code, so the
/// guest reads it as it reads a banger VM's), once.
fn kit(env: &Env) -> anyhow::Result<Kit> {
    let dir = env.dir.join("bench-hand");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let key = dir.join("client");
    let hostkey = dir.join("host");
    for k in [&key, &hostkey] {
        let k = k.to_string_lossy();
        run(&["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", &k])?;
    }
    let read = |p: &Path| std::fs::read_to_string(p).with_context(|| p.display().to_string());
    let gateway = crate::smoke::GATEWAY.to_string();
    let identity = configdrive::Identity {
        hostname: "hand".into(),
        ip: IP.into(),
        mac: MAC.into(),
        prefix: 24,
        gateway: gateway.clone(),
        dns: gateway,
        authorized_key: read(&key.with_extension("pub"))?,
        host_key_private: read(&hostkey)?,
        host_key_public: read(&hostkey.with_extension("pub"))?,
    };
    configdrive::build(&identity, &dir.join("config.img"))
        .map_err(|e| anyhow::anyhow!("the hand-started VM's config drive: {e}"))?;
    Ok(Kit { dir, key })
}

/// One boot: overlay, tap, QEMU; seconds from spawn to `ssh true`.
fn boot_once(env: &Env, kit: &Kit, image: &Path) -> anyhow::Result<f64> {
    let overlay = kit.dir.join("root.qcow2");
    let _ = std::fs::remove_file(&overlay);
    let (r, o) = (
        image.join("rootfs.ext4").to_string_lossy().into_owned(),
        overlay.to_string_lossy().into_owned(),
    );
    run(&[
        "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", &r, &o, "4G",
    ])?;
    env.ns.run(&["ip", "tuntap", "add", TAP, "mode", "tap"])?;
    env.ns
        .run(&["ip", "link", "set", TAP, "master", "banger0", "up"])?;
    // A fresh log: the last boot's line must not count for this one.
    let console = kit.dir.join("console.log");
    let _ = std::fs::remove_file(&console);
    let mut watch = ConsoleWatch::from_end(&console);
    // The kernel the daemon's QEMU boots: the ELF one (PVH) when it can.
    let kernel = ImagePaths::new(image.to_path_buf())
        .kernel_for(&[KernelFormat::PvhVmlinux, KernelFormat::BzImage]);
    let initrd = image.join("initrd.img");
    let config = kit.dir.join("config.img");
    let start = Instant::now();
    let mut qemu = Command::new("ip")
        .args(["netns", "exec", &env.ns.name, "qemu-system-x86_64"])
        .args([
            "-accel", "tcg", "-M", "q35", "-cpu", "max", "-smp", "1", "-m", "768",
        ])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 root=/dev/vda rw panic=-1 net.ifnames=0 banger.config=/dev/vdb {}",
            bangerd::vmm::FAST_BOOT_ARGS
        ))
        .args(["-drive", &format!("file={o},if=virtio,format=qcow2")])
        .args([
            "-drive",
            &format!("file={},if=virtio,format=raw,readonly=on", config.display()),
        ])
        .args([
            "-netdev",
            &format!("tap,id=n0,ifname={TAP},script=no,downscript=no"),
        ])
        .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={MAC}")])
        .args(["-serial", &format!("file:{}", console.display())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let key = kit.key.to_string_lossy().into_owned();
    let mut answered = None;
    let mut last_probe = start;
    while start.elapsed() < Duration::from_secs(600) {
        if !watch.sshd_listens() && last_probe.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        last_probe = Instant::now();
        let ok = env
            .ns
            .capture(&[
                "ssh",
                "-F",
                "/dev/null",
                "-i",
                &key,
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=5",
                "-o",
                "LogLevel=ERROR",
                // The key exchange banger's own clients prefer (KEX_FIRST).
                "-o",
                "KexAlgorithms=^curve25519-sha256",
                &format!("root@{IP}"),
                "true",
            ])
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            answered = Some(start.elapsed().as_secs_f64());
            break;
        }
        if qemu.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    let _ = env.ns.run(&["ip", "link", "del", TAP]);
    answered.context("the hand-started QEMU never answered SSH")
}

/// Hand-started boots of one image (a version directory), one at a time,
/// so that they can be taken turn about with banger's.
pub struct HandBoots {
    kit: Kit,
    image: PathBuf,
}

impl HandBoots {
    pub fn new(env: &Env, image: &Path) -> anyhow::Result<Self> {
        Ok(HandBoots {
            kit: kit(env)?,
            image: image.to_path_buf(),
        })
    }

    /// One boot: seconds from spawn to `ssh true`.
    pub fn once(&self, env: &Env) -> anyhow::Result<f64> {
        boot_once(env, &self.kit, &self.image)
    }
}

impl Drop for HandBoots {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.kit.dir);
    }
}
