//! Disk strategies with a real VM: a VM on the `copy` strategy (a sparse
//! full copy of the image, raw) boots, keeps its data across stop/start,
//! and leaves nothing on delete. (qcow2 is every other scenario's.)

use anyhow::ensure;

use super::{Env, Outcome};

pub const COPY: &str = "smoke-copy";

pub fn copy_strategy(env: &Env) -> anyhow::Result<Outcome> {
    env.create(COPY, &["--disk-strategy", "copy", "--cold"])?;
    let v = env.vm_json(COPY)?;
    ensure!(v["disk_strategy"] == "copy", "vm show: {v}");
    let disk = env.state_dir.join("vms").join(COPY).join("root.img");
    let head = std::fs::read(&disk).map(|b| b.get(..4).map(<[u8]>::to_vec));
    ensure!(
        matches!(&head, Ok(Some(h)) if h.as_slice() != b"QFI\xfb"),
        "{} is not a raw disk",
        disk.display()
    );
    let size = std::fs::metadata(&disk)?.len();
    ensure!(
        size >= 4 << 30,
        "the disk is {size} bytes, not the VM's 4 GiB"
    );
    env.sh(COPY, "echo kept > /root/marker && sync")?;
    env.ok(&["vm", "stop", COPY])?;
    ensure!(!env.vmm_running(COPY), "VMM still running after stop");
    env.ok(&["vm", "start", COPY])?;
    let got = env.sh(COPY, "cat /root/marker")?;
    ensure!(got.trim() == "kept", "after stop/start: {got:?}");
    env.ok(&["vm", "delete", "-f", COPY])?;
    ensure!(
        !env.state_dir.join("vms").join(COPY).exists(),
        "the VM's directory (and its disk) outlived it"
    );
    Ok(Outcome::Pass)
}
