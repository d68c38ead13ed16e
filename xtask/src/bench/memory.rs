//! Memory readings from /proc: a process's RSS, and for a VM's QEMU how
//! much of its RSS is guest RAM (the RAM block, the one mapping of the
//! VM's memory size) and how much is QEMU itself.

use anyhow::Context;

use crate::smoke::Env;

/// What a VM's QEMU holds in memory, in MiB.
pub struct VmMemory {
    /// Resident pages of the guest's RAM block.
    pub ram: f64,
    /// Everything else resident: QEMU's own code, heap, device state.
    pub beyond_ram: f64,
}

/// `VmRSS` of `pid`, in MiB.
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = field_kib(&status, "VmRSS:").context("no VmRSS")?;
    Ok(kib as f64 / 1024.0)
}

fn field_kib(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The memory of VM `vm`'s QEMU (its pid from `vm show`).
pub fn qemu_of(env: &Env, vm: &str, memory_mib: u64) -> anyhow::Result<VmMemory> {
    let pid = env.vm_json(vm)?["pid"]
        .as_u64()
        .with_context(|| format!("{vm} has no pid"))?;
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    Ok(split(&smaps, memory_mib))
}

/// Splits a smaps listing into the RAM block's RSS and the rest.
fn split(smaps: &str, memory_mib: u64) -> VmMemory {
    let want = memory_mib * 1024;
    let (mut total, mut ram) = (0u64, 0u64);
    let mut size = 0u64;
    for line in smaps.lines() {
        if let Some(kib) = field_kib(line, "Size:") {
            size = kib;
        } else if let Some(kib) = field_kib(line, "Rss:") {
            total += kib;
            // The RAM block: the guest's size, rounded up to an alignment.
            if size >= want && size <= want + 4096 {
                ram = ram.max(kib);
            }
        }
    }
    VmMemory {
        ram: ram as f64 / 1024.0,
        beyond_ram: (total - ram) as f64 / 1024.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ram_block_is_told_apart_from_the_rest() {
        let smaps = "\
7f00-7f10 rw-p 00000000 00:00 0
Size:             788480 kB
Rss:              204800 kB
5600-5610 r-xp 00000000 08:01 123 /usr/bin/qemu-system-x86_64
Size:              10240 kB
Rss:                8192 kB
7f20-7f30 rw-p 00000000 00:00 0
Size:              65536 kB
Rss:               20480 kB
";
        let m = split(smaps, 768);
        assert_eq!(m.ram, 200.0);
        assert_eq!(m.beyond_ram, 28.0);
    }
}
