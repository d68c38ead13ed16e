//! Template scenarios: the first cold create of a shape builds its
//! template in the background; VMs restored from it are each their own
//! machine (address, MAC, hostname, host key, machine-id, random stream,
//! clock), reachable side by side, and boot cold again on restart.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use serde_json::Value;

use super::{note, Env, Outcome};

/// The shape every smoke VM has (`Env::create`: 1 vCPU, 768 MiB, 4 GiB).
const SHAPE: &str = "1c-768m-4g";
const SEED: &str = "smoke-seed";
const CLONES: [&str; 2] = ["smoke-clone1", "smoke-clone2"];

/// How long a template build may take on a loaded machine.
const BUILD_WAIT: Duration = Duration::from_secs(900);

fn has_template(env: &Env) -> anyhow::Result<bool> {
    let list: Value = serde_json::from_str(&env.ok(&["image", "list", "--json"])?)?;
    Ok(list.as_array().is_some_and(|images| {
        images.iter().any(|i| {
            i["name"] == "default"
                && i["current"] == true
                && i["templates"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|s| s == SHAPE))
        })
    }))
}

/// Makes sure the smoke shape has a template: a cold create, then the
/// build it starts in the background. Returns how long the wait was.
fn ensure_template(env: &Env) -> anyhow::Result<Option<Duration>> {
    if has_template(env)? {
        return Ok(None);
    }
    if env.banger(&["vm", "show", SEED]).status.success() {
        env.ok(&["vm", "delete", "-f", SEED])?;
    }
    // No template yet: this create boots cold and starts the build.
    let cold = env.create_timed(SEED, &[])?;
    note(format!("cold create-to-SSH: {:.1}s", cold.as_secs_f64()));
    let v = env.vm_json(SEED)?;
    ensure!(v["template"].is_null(), "restored without a template: {v}");
    let shown = env.ok(&["vm", "show", SEED])?;
    ensure!(
        shown.contains("cold"),
        "vm show does not say cold:\n{shown}"
    );
    root_grows_to_the_disk(env, SEED)?;
    let start = Instant::now();
    while !has_template(env)? {
        ensure!(
            start.elapsed() < BUILD_WAIT,
            "no template of {SHAPE} {}s after a cold create; daemon log:\n{}",
            BUILD_WAIT.as_secs(),
            env.diagnostics(&[SEED])
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    env.ok(&["vm", "delete", "-f", SEED])?;
    Ok(Some(start.elapsed()))
}

/// The root filesystem of a VM grows from the image's size to its disk's
/// (4 GiB, the smoke shape's): at once for a VM restored from a template,
/// soon after SSH answers for a cold boot.
pub fn root_grows_to_the_disk(env: &Env, vm: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let gib = env.root_fs_gib(vm)?;
        if gib > 3.5 {
            return Ok(());
        }
        ensure!(
            start.elapsed() < Duration::from_secs(120),
            "the root filesystem of {vm} is still {gib:.2} GiB, not its 4 GiB disk, 120s after SSH answered"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// First phase: the template the middle phase's VMs are restored from.
pub fn built_after_a_cold_create(env: &Env) -> anyhow::Result<Outcome> {
    match ensure_template(env)? {
        Some(wait) => note(format!(
            "template of {SHAPE} ready {:.1}s after the cold create",
            wait.as_secs_f64()
        )),
        None => note("the template was already there"),
    }
    let table = env.ok(&["image", "list"])?;
    ensure!(
        table.contains(SHAPE),
        "image list does not show it:\n{table}"
    );
    Ok(Outcome::Pass)
}

/// What a VM says about itself.
struct Identity {
    hostname: String,
    mac: String,
    addr: String,
    machine_id: String,
    host_key: String,
    random: String,
    boot_id: String,
    clock: i64,
}

fn identity(env: &Env, vm: &str) -> anyhow::Result<Identity> {
    let out = env.sh(
        vm,
        "hostname; cat /sys/class/net/eth0/address; ip -4 -o addr show dev eth0; \
         cat /etc/machine-id; ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub; \
         head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
         cat /proc/sys/kernel/random/boot_id; date +%s",
    )?;
    let l: Vec<&str> = out.lines().collect();
    ensure!(l.len() >= 8, "identity of {vm}:\n{out}");
    Ok(Identity {
        hostname: l[0].trim().into(),
        mac: l[1].trim().into(),
        addr: l[2].trim().into(),
        machine_id: l[3].trim().into(),
        host_key: l[4].trim().into(),
        random: l[5].trim().into(),
        boot_id: l[6].trim().into(),
        clock: l[7].trim().parse().context("date +%s")?,
    })
}

/// Middle phase: two VMs restored at once, each its own machine.
pub fn restored_vms_are_their_own(env: &Env) -> anyhow::Result<Outcome> {
    ensure_template(env)?;
    let start = Instant::now();
    env.create_parallel(&CLONES)?;
    note(format!(
        "two restored creates at once: {:.1}s",
        start.elapsed().as_secs_f64()
    ));
    let mut ids = Vec::new();
    for vm in CLONES {
        let v = env.vm_json(vm)?;
        ensure!(v["template"].is_string(), "{vm} was not restored: {v}");
        let id = identity(env, vm)?;
        ensure!(id.hostname == vm, "{vm} calls itself {}", id.hostname);
        ensure!(
            id.mac == v["mac"],
            "{vm} has MAC {} not {}",
            id.mac,
            v["mac"]
        );
        let ip = v["ip"].as_str().unwrap_or("?");
        ensure!(id.addr.contains(&format!(" {ip}/")), "{vm}: {}", id.addr);
        let host_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64;
        ensure!(
            (host_now - id.clock).abs() < 120,
            "{vm}'s clock is {}s off",
            host_now - id.clock
        );
        ids.push(id);
    }
    let (a, b) = (&ids[0], &ids[1]);
    for (what, x, y) in [
        ("machine-id", &a.machine_id, &b.machine_id),
        ("SSH host key", &a.host_key, &b.host_key),
        ("first random bytes", &a.random, &b.random),
    ] {
        ensure!(x != y, "both restored VMs have the same {what}: {x}");
    }
    // Documented: clones share the template's boot (docs/PERFORMANCE.md).
    ensure!(
        a.boot_id == b.boot_id,
        "restored VMs do not share the template's boot_id as documented"
    );
    // Reachable by name side by side: the bridge learned both MACs.
    let banner = env.sh(
        CLONES[0],
        &format!(
            "timeout 20 bash -c 'exec 3<>/dev/tcp/{}.vm/22; head -c 3 <&3'",
            CLONES[1]
        ),
    )?;
    ensure!(
        banner == "SSH",
        "{} -> {}: {banner:?}",
        CLONES[0],
        CLONES[1]
    );
    // A restart boots cold: a boot of its own, the identity kept.
    env.ok(&["vm", "restart", CLONES[0]])?;
    let again = identity(env, CLONES[0])?;
    ensure!(
        again.boot_id != a.boot_id,
        "restart kept the template's boot_id"
    );
    ensure!(
        again.hostname == CLONES[0] && again.mac == a.mac,
        "identity lost on restart"
    );
    for vm in CLONES {
        env.ok(&["vm", "delete", "-f", vm])?;
    }
    Ok(Outcome::Pass)
}
