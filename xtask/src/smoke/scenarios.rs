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
    ("vm ssh: strict pinned host key, exit code passes", ssh),
    ("vm exec streams output, exit code passes", exec),
    ("vm logs show the boot", logs),
    ("workspace prepare (default overlay mode)", ws_overlay),
    (
        "workspace export (plain) of uncommitted edits",
        ws_export_plain,
    ),
    (
        "workspace export --base-commit includes guest commits",
        ws_base_commit,
    ),
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
    (
        "workspace prepare --readonly drops every write bit",
        ws_readonly,
    ),
    ("workspace prepare --mode full_copy", ws_full_copy),
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

fn ssh(env: &mut Env) -> anyhow::Result<Outcome> {
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
    let host = env.banger(&["vm", "ssh", A, "--", "hostname"]);
    ensure!(
        String::from_utf8_lossy(&host.stdout).trim() == A,
        "reached the wrong guest"
    );
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

fn exec(env: &mut Env) -> anyhow::Result<Outcome> {
    require_a!(env);
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
    // argv survives the trip: quotes and spaces are not re-split.
    let echoed = env.ok(&["vm", "exec", A, "--", "printf", "%s|", "a b", "c'd", ""])?;
    ensure!(echoed == "a b|c'd||", "argv mangled: {echoed:?}");
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
    let ws_before = env.sh(A, "cat /root/repo/README 2>/dev/null || true")?;
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
    let ws_after = env.sh(A, "cat /root/repo/README 2>/dev/null || true")?;
    ensure!(
        ws_before == ws_after,
        "the workspace changed across stop/start: {ws_before:?} -> {ws_after:?}"
    );
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
    // The workspace scenarios' VMs are the victims; one is made if they
    // did not run.
    let mut victims: Vec<String> = [RO, FC]
        .iter()
        .filter(|v| env.vm_state(v).is_ok())
        .map(|v| v.to_string())
        .collect();
    if victims.is_empty() {
        env.create(RO, &[])?;
        victims.push(RO.to_string());
    }
    for v in &victims {
        if env.vm_state(v)? == "running" {
            env.ok(&["vm", "stop", v])?;
        }
    }
    let first = victims[0].clone();
    let b = first.as_str();
    let out = env.banger(&["vm", "prune"]);
    ensure!(
        !out.status.success(),
        "prune without -f and without a terminal must refuse"
    );
    ensure!(
        env.vm_state(b)? == "stopped",
        "prune without -f deleted something"
    );
    if env.vm_json(b)?["workspace"].is_object() {
        env.fails(&["workspace", "export", b], "stopped")?;
    }
    let deleted = env.ok(&["vm", "prune", "-f"])?;
    for v in &victims {
        ensure!(
            deleted.lines().any(|l| l == v),
            "prune output lacks {v}: {deleted}"
        );
    }
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
    let tcp = env
        .ns
        .run(&["dig", "+tcp", "+short", "+time=3", "@172.30.0.1", &name])?;
    ensure!(tcp.trim() == ip, "dig over TCP: {tcp:?}");
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

const RO: &str = "smoke-ro";
const FC: &str = "smoke-fc";

/// A host repo with history, an uncommitted edit and an untracked file.
fn host_repo(env: &Env) -> anyhow::Result<(std::path::PathBuf, String)> {
    let repo = env.dir.join("host-repo");
    if !repo.exists() {
        std::fs::create_dir_all(repo.join("src"))?;
        let git = |args: &[&str]| -> anyhow::Result<String> {
            let mut full = vec![
                "git",
                "-C",
                repo.to_str().unwrap_or("."),
                "-c",
                "user.name=smoke",
                "-c",
                "user.email=smoke@banger",
            ];
            full.extend_from_slice(args);
            crate::sh::quiet(&full)
        };
        git(&["init", "-q", "-b", "main"])?;
        std::fs::write(repo.join("README"), "hello from the host\n")?;
        std::fs::write(repo.join("src/main.c"), "int main(void) { return 0; }\n")?;
        std::fs::write(repo.join(".gitignore"), "*.o\n")?;
        git(&["add", "-A"])?;
        git(&["commit", "-q", "-m", "first"])?;
        std::fs::write(repo.join("src/main.c"), "int main(void) { return 1; }\n")?;
        git(&["commit", "-q", "-am", "second"])?;
        std::fs::write(repo.join("README"), "hello from the host, uncommitted\n")?;
        std::fs::write(repo.join("notes.txt"), "untracked\n")?;
        std::fs::write(repo.join("main.o"), "ignored\n")?;
    }
    let head = crate::sh::quiet(&[
        "git",
        "-C",
        repo.to_str().unwrap_or("."),
        "rev-parse",
        "HEAD",
    ])?;
    Ok((repo, head.trim().to_string()))
}

/// Fingerprint of the host repo that prepare must not change.
fn repo_fingerprint(
    repo: &std::path::Path,
) -> anyhow::Result<(Vec<u8>, std::time::SystemTime, String)> {
    let index = repo.join(".git/index");
    Ok((
        std::fs::read(&index)?,
        std::fs::metadata(repo.join("README"))?.modified()?,
        crate::sh::quiet(&[
            "git",
            "-C",
            repo.to_str().unwrap_or("."),
            "rev-parse",
            "HEAD",
        ])?,
    ))
}

fn ws_overlay(env: &mut Env) -> anyhow::Result<Outcome> {
    require_a!(env);
    let (repo, head) = host_repo(env)?;
    let repo_s = repo.to_string_lossy().into_owned();
    env.fails(&["workspace", "export", A], "no workspace")?;
    env.fails(
        &[
            "workspace",
            "prepare",
            A,
            "--repo",
            &env.dir.to_string_lossy(),
        ],
        "not a git repository",
    )?;
    let before = repo_fingerprint(&repo)?;
    env.ok(&["workspace", "prepare", A, "--repo", &repo_s])?;
    ensure!(
        repo_fingerprint(&repo)? == before,
        "prepare modified the host repo"
    );
    let guest_head = env.sh(A, "git -C /root/repo rev-parse HEAD")?;
    ensure!(
        guest_head.trim() == head,
        "guest HEAD {guest_head:?} != host {head}"
    );
    let log = env.sh(A, "git -C /root/repo log --format=%s")?;
    ensure!(
        log.lines().collect::<Vec<_>>() == ["second", "first"],
        "history: {log:?}"
    );
    let readme = env.sh(A, "cat /root/repo/README")?;
    ensure!(
        readme.contains("uncommitted"),
        "uncommitted edit missing: {readme:?}"
    );
    env.sh(
        A,
        "test -f /root/repo/notes.txt && test ! -e /root/repo/main.o",
    )?;
    let fstype = env.sh(A, "findmnt -n -o FSTYPE /root/repo")?;
    ensure!(
        fstype.trim() == "overlay",
        "/root/repo is {fstype:?}, not an overlay"
    );
    let ws = env.vm_json(A)?["workspace"].clone();
    ensure!(
        ws["mode"] == "overlay" && ws["head"] == head.as_str(),
        "vm show workspace: {ws}"
    );
    env.fails(
        &["workspace", "prepare", A, "--repo", &repo_s],
        "already has a workspace",
    )?;

    Ok(Outcome::Pass)
}

fn ws_export_plain(env: &mut Env) -> anyhow::Result<Outcome> {
    require_a!(env);
    if env.vm_json(A)?["workspace"].is_null() {
        return Ok(Outcome::Skip(format!(
            "{A} has no workspace (the prepare scenario failed)"
        )));
    }
    let (repo, _) = host_repo(env)?;
    let repo_s = repo.to_string_lossy().into_owned();
    env.fails(&["workspace", "export", "nope"], "no VM named")?;
    env.fails(
        &["workspace", "export", A, "--base-commit", "nothex"],
        "not a commit id",
    )?;
    // The guest starts from the host's work tree: a first export is
    // exactly the host's uncommitted state, ignored files left out.
    let first = env.ok(&["workspace", "export", A])?;
    ensure!(
        first.contains("+hello from the host, uncommitted")
            && first.contains("notes.txt")
            && !first.contains("main.o"),
        "first export is not the host's uncommitted state:\n{first}"
    );
    env.sh(
        A,
        "cd /root/repo && echo 'guest line' >> src/main.c && echo new > added.txt",
    )?;
    let patch = env.ok(&["workspace", "export", A])?;
    ensure!(
        patch.contains("+guest line") && patch.contains("added.txt"),
        "patch lacks the guest's edits:\n{patch}"
    );
    let index_after = env.sh(A, "git -C /root/repo status --porcelain")?;
    ensure!(
        index_after.contains("?? added.txt"),
        "export staged files in the guest: {index_after}"
    );
    // The patch applies to a clean checkout of the host's HEAD.
    let file = env.dir.join("plain.patch");
    env.ok(&["workspace", "export", A, "-o", &file.to_string_lossy()])?;
    let clean = env.dir.join("clean-checkout");
    let _ = std::fs::remove_dir_all(&clean);
    crate::sh::quiet(&["git", "clone", "-q", &repo_s, &clean.to_string_lossy()])?;
    crate::sh::quiet(&[
        "git",
        "-C",
        &clean.to_string_lossy(),
        "apply",
        &file.to_string_lossy(),
    ])?;
    let applied = std::fs::read_to_string(clean.join("src/main.c"))?;
    ensure!(
        applied.ends_with("guest line\n"),
        "applied file: {applied:?}"
    );
    Ok(Outcome::Pass)
}

fn ws_base_commit(env: &mut Env) -> anyhow::Result<Outcome> {
    require_a!(env);
    let Ok(ws) = env.vm_json(A).map(|v| v["workspace"].clone()) else {
        return Ok(Outcome::Skip("no VM".into()));
    };
    if ws.is_null() {
        return Ok(Outcome::Skip(format!(
            "{A} has no workspace (the overlay scenario failed)"
        )));
    }
    let (repo, head) = host_repo(env)?;
    env.sh(A, "cd /root/repo && echo committed > guest-commit.txt && git add guest-commit.txt && git -c user.name=g -c user.email=g@g commit -q -m 'guest commit'")?;
    let plain = env.ok(&["workspace", "export", A])?;
    ensure!(
        !plain.contains("guest-commit.txt"),
        "plain export contains the guest commit"
    );
    env.fails(
        &[
            "workspace",
            "export",
            A,
            "--base-commit",
            "0123456789abcdef0123456789abcdef01234567",
        ],
        "not in the guest",
    )?;
    let full = env.dir.join("base.patch");
    env.ok(&[
        "workspace",
        "export",
        A,
        "--base-commit",
        &head,
        "-o",
        &full.to_string_lossy(),
    ])?;
    ensure!(
        std::fs::read_to_string(&full)?.contains("guest-commit.txt"),
        "base export lacks the guest commit"
    );
    // Round trip: the host at the base plus the patch is the guest's tree.
    let clone = env.dir.join("roundtrip");
    let _ = std::fs::remove_dir_all(&clone);
    crate::sh::quiet(&[
        "git",
        "clone",
        "-q",
        &repo.to_string_lossy(),
        &clone.to_string_lossy(),
    ])?;
    let c = clone.to_string_lossy().into_owned();
    crate::sh::quiet(&["git", "-C", &c, "checkout", "-q", &head])?;
    crate::sh::quiet(&["git", "-C", &c, "apply", &full.to_string_lossy()])?;
    let tree = |script: &str| script.to_string();
    let host_tree = crate::sh::quiet(&["sh", "-c", &tree(&format!(
        "cd '{c}' && export GIT_INDEX_FILE=$(mktemp -u) && git add -A . && git write-tree && rm -f $GIT_INDEX_FILE"
    ))])?;
    let guest_tree = env.sh(A, "cd /root/repo && export GIT_INDEX_FILE=$(mktemp -u) && git add -A . && git write-tree && rm -f $GIT_INDEX_FILE")?;
    ensure!(
        host_tree.trim() == guest_tree.trim(),
        "trees differ: host {host_tree} guest {guest_tree}"
    );
    Ok(Outcome::Pass)
}

/// The two extra VMs of the workspace-mode scenarios, booted together.
fn extra_vms(env: &mut Env) -> anyhow::Result<()> {
    let missing: Vec<&str> = [RO, FC]
        .into_iter()
        .filter(|v| env.vm_state(v).is_err())
        .collect();
    if !missing.is_empty() {
        env.create_parallel(&missing)?;
    }
    Ok(())
}

fn ws_readonly(env: &mut Env) -> anyhow::Result<Outcome> {
    let (repo, _) = host_repo(env)?;
    extra_vms(env)?;
    env.ok(&[
        "workspace",
        "prepare",
        RO,
        "--repo",
        &repo.to_string_lossy(),
        "--readonly",
    ])?;
    let writable = env.sh(
        RO,
        "find /root/repo -mindepth 1 ! -type l -perm /222 | head -5",
    )?;
    ensure!(
        writable.trim().is_empty(),
        "entries with write bits:\n{writable}"
    );
    let mode = env.sh(RO, "stat -c %a /root/repo/README /root/repo/src")?;
    ensure!(
        mode.split_whitespace().collect::<Vec<_>>() == ["444", "555"],
        "modes: {mode:?}"
    );
    ensure!(
        env.vm_json(RO)?["workspace"]["readonly"] == true,
        "vm show does not record readonly"
    );
    Ok(Outcome::Pass)
}

fn ws_full_copy(env: &mut Env) -> anyhow::Result<Outcome> {
    let (repo, head) = host_repo(env)?;
    extra_vms(env)?;
    env.ok(&[
        "workspace",
        "prepare",
        FC,
        "--repo",
        &repo.to_string_lossy(),
        "--mode",
        "full_copy",
    ])?;
    let got = env.sh(
        FC,
        "cat /root/repo/README; git -C /root/repo rev-parse HEAD",
    )?;
    ensure!(
        got.contains("uncommitted") && got.contains(&head),
        "repo contents: {got:?}"
    );
    let mounted = env.banger(&["vm", "exec", FC, "--", "findmnt", "/root/repo"]);
    ensure!(
        !mounted.status.success(),
        "full_copy must not mount anything at /root/repo"
    );
    let fs = env.sh(FC, "findmnt -n -o TARGET --target /root/repo")?;
    ensure!(
        fs.trim() == "/",
        "/root/repo is not on the root filesystem: {fs:?}"
    );
    env.sh(FC, "echo edit >> /root/repo/README")?;
    let patch = env.ok(&["workspace", "export", FC])?;
    ensure!(patch.contains("+edit"), "full_copy export: {patch}");
    Ok(Outcome::Pass)
}
