//! The scenarios, in the order they run. They share two VMs: `smoke-a`
//! (created early, kept running until `delete`) and short-lived others.

use anyhow::{ensure, Context};
use serde_json::Value;

use super::{Env, Outcome, Scenario};

pub const ALL: &[Scenario] = &[
    ("daemon up", daemon_up),
    ("image build", image_build),
    ("bad input is refused without side effects", bad_input),
    ("vm create", create),
    ("vm list and show", list_show),
    ("vm ssh and exec exit codes", ssh_exec),
    ("vm logs show the boot", logs),
    ("vm stop/start keeps guest data", stop_start),
    ("vm restart gives a fresh boot_id", restart),
    ("vm kill --signal KILL ends stopped and clean", kill),
    ("dns resolves NAME.vm, also after a daemon restart", dns),
    ("vm ports shows sshd at NAME.vm:22", ports),
    (
        "nat rule: scoped, idempotent across stop/start, removed on delete",
        nat,
    ),
    ("ssh-config --install/--uninstall", ssh_config),
    ("vm prune -f keeps running VMs", prune),
    ("vm delete leaves nothing behind", delete),
];

/// Scenarios a `--filter` run still needs (they set up the rest).
pub const ALWAYS: &[&str] = &["daemon up", "image build", "vm create"];

const A: &str = "smoke-a";

fn needs_a(env: &Env) -> anyhow::Result<Option<Outcome>> {
    match env.vm_state(A) {
        Ok(s) if s == "running" => Ok(None),
        Ok(s) => Ok(Some(Outcome::Skip(format!(
            "{A} is {s}, not running (an earlier scenario failed)"
        )))),
        Err(_) => Ok(Some(Outcome::Skip(format!(
            "{A} does not exist (vm create failed)"
        )))),
    }
}

macro_rules! require_a {
    ($env:expr) => {
        if let Some(skip) = needs_a($env)? {
            return Ok(skip);
        }
    };
}

fn daemon_up(env: &mut Env) -> anyhow::Result<Outcome> {
    let out = env.ok(&["vm", "list", "--json"])?;
    let v: Value = serde_json::from_str(&out)?;
    ensure!(
        v.as_array().is_some_and(|a| a.is_empty()),
        "a fresh daemon lists VMs: {out}"
    );
    let doctor = env.banger(&["doctor"]);
    let text = String::from_utf8_lossy(&doctor.stdout);
    ensure!(
        doctor.status.success(),
        "doctor reports missing requirements:\n{text}"
    );
    ensure!(
        text.contains("[ok  ] the daemon answers"),
        "doctor does not see the daemon:\n{text}"
    );
    let mode = std::fs::metadata(&env.socket)?;
    use std::os::unix::fs::PermissionsExt;
    ensure!(
        mode.permissions().mode() & 0o777 == 0o660,
        "socket mode is {:o}",
        mode.permissions().mode()
    );
    Ok(Outcome::Pass)
}

fn image_build(env: &mut Env) -> anyhow::Result<Outcome> {
    if env.image_dir.join("default/manifest.json").exists() {
        return Ok(Outcome::Skip(format!(
            "--keep-image {} already holds the default image; build skipped to save time",
            env.image_dir.display()
        )));
    }
    env.ok(&["image", "build"])?;
    let list: Value = serde_json::from_str(&env.ok(&["image", "list", "--json"])?)?;
    let img = list
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == "default"))
        .context("image list does not show `default` after the build")?;
    ensure!(
        img["kernel"]
            .as_str()
            .is_some_and(|k| k.contains("cloud-amd64")),
        "kernel: {img}"
    );
    for f in ["vmlinuz", "initrd.img", "rootfs.ext4"] {
        ensure!(
            env.image_dir.join("default").join(f).exists(),
            "image lacks {f}"
        );
    }
    Ok(Outcome::Pass)
}

fn bad_input(env: &mut Env) -> anyhow::Result<Outcome> {
    for bad in ["Bad", "-dev", "dev-", "a_b", "dev.vm", &"a".repeat(33)] {
        env.fails(
            &["vm", "create", &format!("--name={bad}")],
            "invalid VM name",
        )?;
    }
    env.fails(&["vm", "show", "nope"], "no VM named")?;
    env.fails(&["vm", "stop", "nope"], "no VM named")?;
    env.fails(&["vm", "delete", "nope"], "no VM named")?;
    env.fails(
        &["vm", "kill", "nope", "--signal", "BOGUS"],
        "unknown signal",
    )?;
    env.fails(&["vm", "create", "--name", "x", "--cpus", "0"], "--cpus")?;
    env.fails(
        &["vm", "create", "--name", "x", "--image", "nosuch"],
        "no image named",
    )?;
    let list: Value = serde_json::from_str(&env.ok(&["vm", "list", "--json"])?)?;
    ensure!(
        list.as_array().is_some_and(|a| a.is_empty()),
        "bad input left a VM behind: {list}"
    );
    ensure!(
        !env.state_dir.join("vms/x").exists(),
        "bad input left files behind"
    );
    Ok(Outcome::Pass)
}

fn create(env: &mut Env) -> anyhow::Result<Outcome> {
    let t = std::time::Instant::now();
    env.create(A, &[])?;
    println!("       create-to-SSH: {:.1}s", t.elapsed().as_secs_f64());
    let v = env.vm_json(A)?;
    ensure!(v["state"] == "running", "state after create: {v}");
    for field in ["name", "state", "ip", "mac", "tap", "vmm", "created_at"] {
        ensure!(!v[field].is_null(), "vm show --json lacks {field}: {v}");
    }
    ensure!(
        env.links()?.contains(v["tap"].as_str().unwrap_or("?")),
        "tap missing"
    );
    env.fails(&["vm", "create", "--name", A], "already exists")?;
    env.fails(&["vm", "start", A], "running")?;
    Ok(Outcome::Pass)
}

fn list_show(env: &mut Env) -> anyhow::Result<Outcome> {
    require_a!(env);
    let table = env.ok(&["vm", "list"])?;
    let row = table
        .lines()
        .find(|l| l.starts_with(A))
        .context("vm list lacks the VM")?;
    ensure!(row.contains("running"), "row: {row}");
    let list: Value = serde_json::from_str(&env.ok(&["vm", "list", "--json"])?)?;
    let ip = env.vm_json(A)?["ip"].clone();
    ensure!(
        list[0]["ip"] == ip && ip.as_str().is_some_and(|s| s.starts_with("172.30.0.")),
        "ip: {ip}"
    );
    let show = env.ok(&["vm", "show", A])?;
    ensure!(
        show.contains("state") && show.contains("running"),
        "show: {show}"
    );
    Ok(Outcome::Pass)
}

fn ssh_exec(env: &mut Env) -> anyhow::Result<Outcome> {
    require_a!(env);
    let out = env.banger(&["vm", "ssh", A, "--", "echo", "from-ssh;", "exit", "5"]);
    ensure!(
        out.status.code() == Some(5),
        "vm ssh exit code: {:?}",
        out.status
    );
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("from-ssh"),
        "ssh output"
    );
    let out = env.banger(&[
        "vm",
        "exec",
        A,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    ensure!(
        out.status.code() == Some(7),
        "vm exec exit code: {:?}",
        out.status
    );
    ensure!(
        String::from_utf8_lossy(&out.stdout).trim() == "out",
        "stdout: {:?}",
        out.stdout
    );
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("err"),
        "stderr not passed"
    );
    let host = env.sh(A, "hostname")?;
    ensure!(host.trim() == A, "guest hostname is {host:?}");
    // Strict host key checking against the pinned per-VM key.
    let kh = std::fs::read_to_string(env.state_dir.join("ssh/known_hosts"))?;
    ensure!(
        kh.lines()
            .filter(|l| l.contains(&format!("banger-vm:{A}")))
            .count()
            == 1,
        "known_hosts: {kh}"
    );
    let guest_key = env.sh(A, "cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub")?;
    ensure!(
        kh.contains(guest_key.trim()),
        "pinned key is not the guest's host key"
    );
    Ok(Outcome::Pass)
}

fn logs(env: &mut Env) -> anyhow::Result<Outcome> {
    require_a!(env);
    let text = env.ok(&["vm", "logs", A])?;
    ensure!(
        text.contains("Linux version") || text.contains("systemd"),
        "console lacks the boot:\n{}",
        &text[..text.len().min(500)]
    );
    Ok(Outcome::Pass)
}

fn stop_start(env: &mut Env) -> anyhow::Result<Outcome> {
    require_a!(env);
    env.sh(A, "echo persisted > /root/marker && sync")?;
    let tap = env.vm_json(A)?["tap"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    env.ok(&["vm", "stop", A])?;
    ensure!(env.vm_state(A)? == "stopped", "state after stop");
    env.fails(&["vm", "ports", A], "stopped")?;
    env.fails(&["vm", "ports", A], "stopped")?;
    ensure!(!env.vmm_running(A), "VMM still running after stop");
    ensure!(!env.links()?.contains(&tap), "tap {tap} left after stop");
    env.fails(&["vm", "stop", A], "stopped")?;
    env.fails(&["vm", "exec", A, "--", "true"], "stopped")?;
    env.ok(&["vm", "start", A])?;
    let got = env.sh(A, "cat /root/marker")?;
    ensure!(got.trim() == "persisted", "file after restart: {got:?}");
    Ok(Outcome::Pass)
}

fn restart(env: &mut Env) -> anyhow::Result<Outcome> {
    require_a!(env);
    let before = env.sh(A, "cat /proc/sys/kernel/random/boot_id")?;
    env.ok(&["vm", "restart", A])?;
    ensure!(env.vm_state(A)? == "running", "state after restart");
    let after = env.sh(A, "cat /proc/sys/kernel/random/boot_id")?;
    ensure!(before.trim() != after.trim(), "boot_id unchanged: {before}");
    let ops = env.ok(&["ops", "--json"])?;
    ensure!(
        ops.contains("\"vm_restart\""),
        "restart is not its own operation: {ops}"
    );
    Ok(Outcome::Pass)
}

fn kill(env: &mut Env) -> anyhow::Result<Outcome> {
    require_a!(env);
    env.sh(A, "echo survives > /root/killed && sync")?;
    env.ok(&["vm", "kill", A, "--signal", "KILL"])?;
    let v = env.vm_json(A)?;
    ensure!(v["state"] == "stopped", "state after kill: {}", v["state"]);
    ensure!(!env.vmm_running(A), "VMM alive after kill");
    let run = env.run_dir.join("vms").join(A);
    ensure!(!run.exists(), "runtime files left: {}", run.display());
    ensure!(
        !env.links()?.contains(v["tap"].as_str().unwrap_or("?")),
        "tap left after kill"
    );
    ensure!(
        env.state_dir
            .join("vms")
            .join(A)
            .join("root.qcow2")
            .exists(),
        "kill lost the disk"
    );
    env.ok(&["vm", "start", A])?;
    let got = env.sh(A, "cat /root/killed")?;
    ensure!(got.trim() == "survives", "data after kill: {got:?}");
    Ok(Outcome::Pass)
}

fn ssh_config(env: &mut Env) -> anyhow::Result<Outcome> {
    require_a!(env);
    let home = env.dir.join("home");
    let ssh_dir = home.join(".ssh");
    std::fs::create_dir_all(&ssh_dir)?;
    let mine = "# my own config\nHost example\n    User me\n";
    std::fs::write(ssh_dir.join("config"), mine)?;
    let with_home = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(["netns", "exec", &env.ns.name])
            .arg(&env.banger)
            .args(args)
            .env("BANGER_SOCKET", &env.socket)
            .env("HOME", &home)
            .output()
    };
    let printed = env.ok(&["ssh-config"])?;
    ensure!(
        printed.contains("Host *.vm") && printed.contains("StrictHostKeyChecking yes"),
        "{printed}"
    );
    for _ in 0..2 {
        ensure!(
            with_home(&["ssh-config", "--install"])?.status.success(),
            "install failed"
        );
    }
    let installed = std::fs::read_to_string(ssh_dir.join("config"))?;
    ensure!(
        installed.matches("Include ").count() == 1,
        "Include duplicated:\n{installed}"
    );
    ensure!(
        installed.ends_with(mine),
        "install clobbered the user's config:\n{installed}"
    );
    // Plain `ssh NAME.vm` through the installed config, resolved by the
    // daemon's DNS (OpenSSH reads the passwd home, so -F names the file).
    let user_config = ssh_dir.join("config").to_string_lossy().into_owned();
    let target = format!("{A}.vm");
    let out = env.ns.capture(&[
        "ssh",
        "-F",
        &user_config,
        "-o",
        "BatchMode=yes",
        &target,
        "hostname",
    ])?;
    ensure!(
        out.status.success(),
        "ssh {target} via the installed config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        String::from_utf8_lossy(&out.stdout).trim() == A,
        "reached the wrong host"
    );
    ensure!(
        with_home(&["ssh-config", "--uninstall"])?.status.success(),
        "uninstall failed"
    );
    ensure!(
        std::fs::read_to_string(ssh_dir.join("config"))? == mine,
        "uninstall did not restore the file"
    );
    Ok(Outcome::Pass)
}

fn prune(env: &mut Env) -> anyhow::Result<Outcome> {
    require_a!(env);
    let b = "smoke-b";
    env.create(b, &[])?;
    env.ok(&["vm", "stop", b])?;
    let out = env.banger(&["vm", "prune"]);
    ensure!(
        !out.status.success(),
        "prune without -f and without a terminal must refuse"
    );
    ensure!(
        env.vm_state(b)? == "stopped",
        "prune without -f deleted something"
    );
    let deleted = env.ok(&["vm", "prune", "-f"])?;
    ensure!(deleted.lines().any(|l| l == b), "prune output: {deleted}");
    ensure!(
        env.vm_state(A)? == "running",
        "prune touched the running VM"
    );
    env.fails(&["vm", "show", b], "no VM named")?;
    ensure!(
        !env.state_dir.join("vms").join(b).exists(),
        "prune left files"
    );
    Ok(Outcome::Pass)
}

fn delete(env: &mut Env) -> anyhow::Result<Outcome> {
    require_a!(env);
    let v = env.vm_json(A)?;
    let tap = v["tap"].as_str().unwrap_or_default().to_string();
    env.fails(&["vm", "delete", A], "-f")?;
    ensure!(
        env.vm_state(A)? == "running",
        "a refused delete changed the VM"
    );
    env.ok(&["vm", "delete", "-f", A])?;
    env.fails(&["vm", "show", A], "no VM named")?;
    ensure!(!env.vmm_running(A), "VMM left");
    ensure!(!env.links()?.contains(&tap), "tap left");
    ensure!(
        !env.state_dir.join("vms").join(A).exists(),
        "VM directory left"
    );
    ensure!(
        !env.run_dir.join("vms").join(A).exists(),
        "runtime directory left"
    );
    let kh = std::fs::read_to_string(env.state_dir.join("ssh/known_hosts"))?;
    ensure!(
        !kh.contains(&format!("banger-vm:{A}")),
        "known_hosts line left"
    );
    ensure!(
        resolve(env, &format!("{A}.vm"))?.is_none(),
        "DNS record left after delete"
    );
    Ok(Outcome::Pass)
}

fn resolve(env: &Env, name: &str) -> anyhow::Result<Option<String>> {
    let out = env.ns.capture(&["getent", "hosts", name])?;
    let first = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    Ok(out.status.success().then_some(first))
}

fn dns(env: &mut Env) -> anyhow::Result<Outcome> {
    require_a!(env);
    let ip = env.vm_json(A)?["ip"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let name = format!("{A}.vm");
    ensure!(
        resolve(env, &name)?.as_deref() == Some(ip.as_str()),
        "host side: {name} does not resolve to {ip}"
    );
    let guest = env.sh(A, &format!("getent hosts {name}"))?;
    ensure!(guest.starts_with(&ip), "guest side: {guest:?}");
    let dig = env
        .ns
        .run(&["dig", "+short", "+time=3", "@172.30.0.1", &name])?;
    ensure!(dig.trim() == ip, "dig: {dig:?}");
    let nx = env
        .ns
        .run(&["dig", "+time=3", "@172.30.0.1", "no-such-vm.vm"])?;
    ensure!(nx.contains("status: NXDOMAIN"), "unknown .vm name: {nx}");
    // A restarted daemon serves every record again and re-adopts the VM.
    env.stop_daemon();
    ensure!(env.vmm_running(A), "the VM must outlive the daemon");
    env.start_daemon()?;
    ensure!(
        env.vm_state(A)? == "running",
        "not re-adopted after a daemon restart"
    );
    let mut resolved = None;
    for _ in 0..50 {
        resolved = resolve(env, &name)?;
        if resolved.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    ensure!(
        resolved.as_deref() == Some(ip.as_str()),
        "after a daemon restart: {resolved:?}"
    );
    env.sh(A, "true")
        .context("the re-adopted VM does not answer")?;
    Ok(Outcome::Pass)
}

fn ports(env: &mut Env) -> anyhow::Result<Outcome> {
    require_a!(env);
    let v: Value = serde_json::from_str(&env.ok(&["vm", "ports", A, "--json"])?)?;
    let ssh = v
        .as_array()
        .and_then(|a| a.iter().find(|p| p["proto"] == "tcp" && p["port"] == 22))
        .with_context(|| format!("no tcp/22 in {v}"))?;
    ensure!(
        ssh["endpoint"] == format!("{A}.vm:22"),
        "endpoint: {}",
        ssh["endpoint"]
    );
    ensure!(ssh["process"] == "sshd", "process: {}", ssh["process"]);
    let text = env.ok(&["vm", "ports", A])?;
    ensure!(
        !text.contains("localhost") && !text.contains("172.30.0."),
        "raw address shown: {text}"
    );
    Ok(Outcome::Pass)
}

/// Lines of `iptables -t TABLE -S CHAIN` in the namespace mentioning `needle`.
fn rules(env: &Env, table: &str, chain: &str, needle: &str) -> anyhow::Result<Vec<String>> {
    let out = env.ns.run(&["iptables", "-t", table, "-S", chain])?;
    Ok(out
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect())
}

fn nat(env: &mut Env) -> anyhow::Result<Outcome> {
    require_a!(env);
    let vm = "smoke-nat";
    env.fails(&["vm", "create", "--name", A, "--nat"], "already exists")?;
    env.create(vm, &["--nat"])?;
    let v = env.vm_json(vm)?;
    ensure!(v["nat"] == true, "vm show --json nat: {}", v["nat"]);
    let ip = v["ip"].as_str().unwrap_or_default().to_string();
    let tag = format!("banger:{vm}");
    let check_once = |when: &str| -> anyhow::Result<()> {
        let masq = rules(env, "nat", "POSTROUTING", &tag)?;
        ensure!(
            masq.len() == 1,
            "{when}: {} MASQUERADE rules: {masq:?}",
            masq.len()
        );
        let r = &masq[0];
        ensure!(
            r.contains(&format!("-s {ip}/32"))
                && r.contains("! -o banger0")
                && r.contains("-j MASQUERADE"),
            "{when}: rule {r}"
        );
        let fwd = rules(env, "filter", "FORWARD", &tag)?;
        ensure!(fwd.len() == 2, "{when}: forward rules {fwd:?}");
        Ok(())
    };
    check_once("after create")?;
    ensure!(
        rules(env, "nat", "POSTROUTING", &format!("banger:{A}"))?.is_empty(),
        "{A} has NAT without --nat"
    );
    ensure!(
        rules(env, "filter", "FORWARD", "banger:isolate")?.len() == 1,
        "no bridge isolation rule"
    );
    env.ok(&["vm", "stop", vm])?;
    env.ok(&["vm", "start", vm])?;
    check_once("after stop/start")?;
    let fwd = env.ns.run(&["cat", "/proc/sys/net/ipv4/ip_forward"])?;
    ensure!(fwd.trim() == "1", "forwarding is off");
    env.ok(&["vm", "delete", "-f", vm])?;
    ensure!(
        rules(env, "nat", "POSTROUTING", &tag)?.is_empty(),
        "MASQUERADE left after delete"
    );
    ensure!(
        rules(env, "filter", "FORWARD", &tag)?.is_empty(),
        "FORWARD rules left after delete"
    );
    Ok(Outcome::Pass)
}
