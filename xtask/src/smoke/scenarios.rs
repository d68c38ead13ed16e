//! The scenarios. Each declares the VMs it needs (its [`VmSpec`]s, made by
//! the fixture before it starts) or makes them itself, so each runs alone
//! with `--filter`. Scenarios that only look at a VM share `smoke-a` and
//! leave it running; a scenario that stops, kills, restarts, prunes or
//! deletes a VM, or edits a workspace, has VMs of its own.

use anyhow::{ensure, Context};
use serde_json::Value;

use super::env::VmSpec;
use super::{everyday, files, mcp, note, templates, trust, Env, Outcome, Scenario};

pub const ALL: &[Scenario] = &[
    Scenario::first("daemon up", daemon_up),
    Scenario::first("image build", image_build),
    Scenario::first("bad input is refused without side effects", bad_input),
    // Later VMs of the smoke shape are restored from it.
    Scenario::first(
        "a template is built after the first cold create",
        templates::built_after_a_cold_create,
    ),
    Scenario::together("vm create", create).makes(&[A]),
    Scenario::together("vm list and show", list_show).vms(&[&SHARED]),
    Scenario::together("vm ssh: strict pinned host key, exit code passes", ssh).vms(&[&SHARED]),
    Scenario::together("vm exec streams output, exit code passes", exec).vms(&[&SHARED]),
    Scenario::together("vm logs show the boot", logs).vms(&[&SHARED]),
    Scenario::together("workspace prepare (default overlay mode)", ws_overlay).vms(&[&WS]),
    Scenario::together(
        "workspace export (plain) of uncommitted edits",
        ws_export_plain,
    )
    .vms(&[&WS_READY]),
    Scenario::together(
        "workspace export --base-commit includes guest commits",
        ws_base_commit,
    )
    .vms(&[&WS_READY]),
    Scenario::together("vm stop/start keeps guest data", stop_start)
        .vms(&[&LIFE])
        .early(),
    // Also checks that the cold boot took banger's fast path.
    Scenario::together("vm restart gives a fresh boot_id", restart).vms(&[&LIFE]),
    Scenario::together("vm kill --signal KILL ends stopped and clean", kill).vms(&[&LIFE]),
    // Restarts the daemon: nothing else may talk to it meanwhile.
    Scenario::last("dns resolves NAME.vm, also after a daemon restart", dns).vms(&[&SHARED]),
    // Restarts the daemon too.
    Scenario::last(
        "vm set-ttl: a daemon restart keeps the deadline",
        everyday::ttl_restart,
    )
    .makes(&[everyday::TTL_RESTART]),
    Scenario::together("vm ports shows sshd at NAME.vm:22", ports).vms(&[&SHARED]),
    Scenario::together(
        "nat rule: scoped, idempotent across stop/start, removed on delete",
        nat,
    )
    .vms(&[&SHARED])
    .makes(&[NAT])
    .early(),
    Scenario::together("ssh-config --install/--uninstall", ssh_config).vms(&[&SHARED]),
    Scenario::together(
        "workspace prepare --readonly drops every write bit",
        ws_readonly,
    )
    .vms(&[&RO]),
    Scenario::together("workspace prepare --mode full_copy", ws_full_copy).vms(&[&FC]),
    // Deletes every VM that is not running: others' VMs stop for a while.
    Scenario::last("vm prune -f keeps running VMs", prune).vms(&[&SHARED, &PRUNE_RO, &PRUNE_FC]),
    Scenario::together("the VMM runs as its own uid, sandboxed", |env| {
        trust::vmm_unprivileged(env, A)
    })
    .vms(&[&SHARED]),
    Scenario::together("guests reach only DNS of the host, and each other", |env| {
        trust::guests_reach_only_dns(env, A, FC.name)
    })
    .vms(&[&SHARED, &FC]),
    Scenario::together("a group member uses their own VMs, and only those", |env| {
        trust::group_member(env, A)
    })
    .vms(&[&SHARED])
    .makes(&["smoke-member"])
    .early(),
    Scenario::together(
        "a guest cannot hold the daemon: 100 MB export streams, kill wins over a hung one",
        trust::guest_cannot_hold,
    )
    .makes(&["smoke-hog"])
    .early(),
    Scenario::together(
        "restored VMs are each their own machine, side by side",
        templates::restored_vms_are_their_own,
    )
    .makes(&["smoke-clone1", "smoke-clone2"]),
    Scenario::together(
        "image build --include and --script, booted",
        everyday::image_custom,
    )
    .makes(&[everyday::CUSTOM])
    .early(),
    Scenario::together(
        "image create --from-vm keeps the VM's files",
        everyday::image_from_vm,
    )
    .makes(&[everyday::SRC, "smoke-snapvm"])
    .early(),
    Scenario::together(
        "one step: vm create --repo prepares; a bad repo makes no VM",
        everyday::create_with_repo,
    )
    .makes(&[everyday::REPO]),
    Scenario::together(
        "lifetime: vm create --ttl, the VM goes when it ends",
        everyday::ttl,
    )
    .makes(&[everyday::TTL])
    .early(),
    // Writes only under a /tmp path of its own in the shared VM, and
    // removes it.
    Scenario::together(
        "vm cp: a tree with a symlink, an executable and 12 MB, in and out unchanged",
        |env| files::cp(env, A),
    )
    .vms(&[&SHARED]),
    Scenario::together("vm exec -w/-e/-i/-t, quoted safely", |env| {
        files::exec_options(env, A)
    })
    .vms(&[&SHARED]),
    Scenario::together(
        "banger mcp: the official MCP Python SDK creates, runs, exports, deletes",
        mcp::official_client,
    )
    .makes(&["smoke-mcp"])
    .early(),
    Scenario::together(
        "workspace export is exact after every kind of change, overlay and full_copy",
        super::wsexport::exact_in_both_modes,
    )
    .vms(&[&super::wsexport::OVERLAY, &super::wsexport::FULL]),
    Scenario::together(
        "a VM on the copy disk strategy boots, keeps its data, leaves nothing",
        super::disks::copy_strategy,
    )
    .makes(&[super::disks::COPY]),
    // Its tap must be gone, and a VM made meanwhile could take its slot.
    Scenario::last("vm delete leaves nothing behind", delete).vms(&[&DEL]),
];

/// Scenarios a `--filter` run still needs: the image build, measured on
/// its own (the first `vm create` would otherwise build it unseen).
pub const ALWAYS: &[&str] = &["image build"];

/// The shared VM: running, no workspace; its users only look at it. `vm
/// create` makes it when it runs (the others wait for it) and `vm delete`
/// deletes it at the end; the fixture makes it otherwise.
const SHARED: VmSpec = VmSpec::running("smoke-a").shared();
const A: &str = SHARED.name;
/// Made by `nat` itself, with `--nat`.
const NAT: &str = "smoke-nat";
/// `workspace prepare` prepares it, and leaves it as the two export
/// scenarios start from it (they edit it in turn).
const WS: VmSpec = VmSpec::running("smoke-ws");
const WS_READY: VmSpec = VmSpec::running("smoke-ws").with_workspace(&[]);
/// Stopped, restarted and killed in turn, by one scenario at a time, each
/// leaving it running; its workspace must survive the stop.
const LIFE: VmSpec = VmSpec::running("smoke-life").with_workspace(&[]);
const RO: VmSpec = VmSpec::running("smoke-ro");
const FC: VmSpec = VmSpec::running("smoke-fc");
/// Prune's victims: the workspace-mode VMs (made so when they did not run).
const PRUNE_RO: VmSpec = VmSpec::running("smoke-ro")
    .with_workspace(&["--readonly"])
    .stopped();
const PRUNE_FC: VmSpec = VmSpec::running("smoke-fc")
    .with_workspace(&["--mode", "full_copy"])
    .stopped();
/// The VM `vm delete` deletes, when all the rest is done with it.
const DEL: VmSpec = VmSpec::running(A);

fn daemon_up(env: &Env) -> anyhow::Result<Outcome> {
    let out = env.ok(&["vm", "list", "--json"])?;
    let v: Value = serde_json::from_str(&out)?;
    ensure!(
        v.as_array().is_some_and(|a| a.is_empty()),
        "a fresh daemon lists VMs: {out}"
    );
    // A closed pipe (a guest ending a copy early) is an error to the
    // daemon, never its end: it ignores SIGPIPE.
    let pid = env.daemon_pid().context("no daemon process")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .context("no SigIgn in the daemon's status")?;
    ensure!(
        ignored & (1 << (libc::SIGPIPE - 1)) != 0,
        "the daemon does not ignore SIGPIPE (SigIgn {ignored:x}): a closed pipe would end it"
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

fn image_build(env: &Env) -> anyhow::Result<Outcome> {
    let kept = ["default/current/manifest.json", "default/manifest.json"];
    if kept.iter().any(|m| env.image_dir.join(m).exists()) {
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
    // Versioned: `default/current` names the version just built.
    for f in ["vmlinuz", "initrd.img", "rootfs.ext4", "manifest.json"] {
        ensure!(
            env.image_dir.join("default/current").join(f).exists(),
            "image lacks {f}"
        );
    }
    Ok(Outcome::Pass)
}

fn bad_input(env: &Env) -> anyhow::Result<Outcome> {
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

fn create(env: &Env) -> anyhow::Result<Outcome> {
    const VM: &str = A;
    let took = env.create_timed(VM, &[])?;
    note(format!("create-to-SSH: {:.1}s", took.as_secs_f64()));
    let v = env.vm_json(VM)?;
    ensure!(v["state"] == "running", "state after create: {v}");
    for field in ["name", "state", "ip", "mac", "tap", "vmm", "created_at"] {
        ensure!(!v[field].is_null(), "vm show --json lacks {field}: {v}");
    }
    ensure!(
        env.has_link(v["tap"].as_str().unwrap_or("?"))?,
        "tap missing"
    );
    env.fails(&["vm", "create", "--name", VM], "already exists")?;
    env.fails(&["vm", "start", VM], "running")?;
    super::templates::root_grows_to_the_disk(env, VM)?;
    Ok(Outcome::Pass)
}

fn list_show(env: &Env) -> anyhow::Result<Outcome> {
    let table = env.ok(&["vm", "list"])?;
    let row = table
        .lines()
        .find(|l| l.starts_with(A))
        .context("vm list lacks the VM")?;
    ensure!(row.contains("running"), "row: {row}");
    let list: Value = serde_json::from_str(&env.ok(&["vm", "list", "--json"])?)?;
    let ip = env.vm_json(A)?["ip"].clone();
    // Other scenarios' VMs may be listed too: the row named A.
    let listed = list
        .as_array()
        .and_then(|l| l.iter().find(|v| v["name"] == A))
        .with_context(|| format!("vm list --json lacks {A}: {list}"))?;
    ensure!(
        listed["ip"] == ip && ip.as_str().is_some_and(|s| s.starts_with("172.30.0.")),
        "ip: {ip}"
    );
    let show = env.ok(&["vm", "show", A])?;
    ensure!(
        show.contains("state") && show.contains("running"),
        "show: {show}"
    );
    Ok(Outcome::Pass)
}

fn ssh(env: &Env) -> anyhow::Result<Outcome> {
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

fn exec(env: &Env) -> anyhow::Result<Outcome> {
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

fn logs(env: &Env) -> anyhow::Result<Outcome> {
    let text = env.ok(&["vm", "logs", A])?;
    ensure!(
        text.contains("Linux version") || text.contains("systemd"),
        "console lacks the boot:\n{}",
        &text[..text.len().min(500)]
    );
    Ok(Outcome::Pass)
}

fn stop_start(env: &Env) -> anyhow::Result<Outcome> {
    const VM: &str = LIFE.name;
    env.sh(VM, "echo persisted > /root/marker && sync")?;
    let ws_before = env.sh(VM, "cat /root/repo/README 2>/dev/null || true")?;
    ensure!(
        ws_before.contains("uncommitted"),
        "the VM has no workspace to keep: {ws_before:?}"
    );
    let tap = env.vm_json(VM)?["tap"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    env.ok(&["vm", "stop", VM])?;
    ensure!(env.vm_state(VM)? == "stopped", "state after stop");
    env.fails(&["vm", "ports", VM], "stopped")?;
    env.fails(&["vm", "ports", VM], "stopped")?;
    ensure!(!env.vmm_running(VM), "VMM still running after stop");
    ensure!(!env.has_link(&tap)?, "tap {tap} left after stop");
    env.fails(&["vm", "stop", VM], "stopped")?;
    env.fails(&["vm", "exec", VM, "--", "true"], "stopped")?;
    env.ok(&["vm", "start", VM])?;
    let got = env.sh(VM, "cat /root/marker")?;
    ensure!(got.trim() == "persisted", "file after restart: {got:?}");
    let ws_after = env.sh(VM, "cat /root/repo/README 2>/dev/null || true")?;
    ensure!(
        ws_before == ws_after,
        "the workspace changed across stop/start: {ws_before:?} -> {ws_after:?}"
    );
    Ok(Outcome::Pass)
}

fn restart(env: &Env) -> anyhow::Result<Outcome> {
    const VM: &str = LIFE.name;
    let before = env.sh(VM, "cat /proc/sys/kernel/random/boot_id")?;
    env.ok(&["vm", "restart", VM])?;
    ensure!(env.vm_state(VM)? == "running", "state after restart");
    let after = env.sh(VM, "cat /proc/sys/kernel/random/boot_id")?;
    ensure!(before.trim() != after.trim(), "boot_id unchanged: {before}");
    let ops = env.ok(&["ops", "--json"])?;
    ensure!(
        ops.contains("\"vm_restart\""),
        "restart is not its own operation: {ops}"
    );
    cold_boot_is_the_fast_one(env, VM)?;
    Ok(Outcome::Pass)
}

/// `vm`'s last boot was cold and took banger's fast path: QEMU booted the
/// ELF kernel (PVH), without the crypto self-tests; the guest read its
/// identity from the config drive's text (no mount of it) and its sshd
/// said on the console when it listened. Each of these failing would
/// still boot, only slower, which no other check would notice.
fn cold_boot_is_the_fast_one(env: &Env, vm: &str) -> anyhow::Result<()> {
    let pid = env.vm_json(vm)?["pid"]
        .as_u64()
        .context("a running VM shows its VMM's pid")?;
    let argv = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    let argv: Vec<String> = argv
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let kernel = argv
        .iter()
        .position(|a| a == "-kernel")
        .and_then(|i| argv.get(i + 1))
        .context("no -kernel on the VMM's command line")?;
    ensure!(
        kernel.ends_with("/vmlinux"),
        "QEMU booted {kernel}, not the ELF kernel"
    );
    let cmdline = env.sh(vm, "cat /proc/cmdline")?;
    ensure!(
        cmdline.contains("cryptomgr.notests"),
        "kernel command line: {cmdline}"
    );
    let logs = env.ok(&["vm", "logs", vm])?;
    let boot = logs
        .rfind("Linux version")
        .map(|at| &logs[at..])
        .context("vm logs show no kernel boot")?;
    ensure!(
        boot.contains("banger: sshd listens"),
        "the boot's sshd never said it listens"
    );
    ensure!(
        !boot.contains("EXT4-fs (vdb)"),
        "the guest mounted its config drive instead of reading its text"
    );
    note(format!(
        "{vm} booted {kernel}, identity read as text, sshd announced"
    ));
    Ok(())
}

fn kill(env: &Env) -> anyhow::Result<Outcome> {
    const VM: &str = LIFE.name;
    env.sh(VM, "echo survives > /root/killed && sync")?;
    env.ok(&["vm", "kill", VM, "--signal", "KILL"])?;
    let v = env.vm_json(VM)?;
    ensure!(v["state"] == "stopped", "state after kill: {}", v["state"]);
    ensure!(!env.vmm_running(VM), "VMM alive after kill");
    let run = env.run_dir.join("vms").join(VM);
    ensure!(!run.exists(), "runtime files left: {}", run.display());
    ensure!(
        !env.has_link(v["tap"].as_str().unwrap_or("?"))?,
        "tap left after kill"
    );
    ensure!(
        env.state_dir
            .join("vms")
            .join(VM)
            .join("root.qcow2")
            .exists(),
        "kill lost the disk"
    );
    env.ok(&["vm", "start", VM])?;
    let got = env.sh(VM, "cat /root/killed")?;
    ensure!(got.trim() == "survives", "data after kill: {got:?}");
    Ok(Outcome::Pass)
}

fn ssh_config(env: &Env) -> anyhow::Result<Outcome> {
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

fn prune(env: &Env) -> anyhow::Result<Outcome> {
    // Two stopped victims (the first with a workspace) and the shared
    // running VM, which must survive.
    let victims = [PRUNE_RO.name, PRUNE_FC.name];
    for v in victims {
        ensure!(env.vm_state(v)? == "stopped", "victim {v} is not stopped");
    }
    let b = victims[0];
    let out = env.banger(&["vm", "prune"]);
    ensure!(
        !out.status.success(),
        "prune without -f and without a terminal must refuse"
    );
    for v in victims {
        ensure!(
            env.vm_state(v)? == "stopped",
            "prune without -f deleted something"
        );
    }
    ensure!(
        env.vm_json(b)?["workspace"].is_object(),
        "victim {b} has no workspace"
    );
    env.fails(&["workspace", "export", b], "stopped")?;
    let deleted = env.ok(&["vm", "prune", "-f"])?;
    for v in victims {
        ensure!(
            deleted.lines().any(|l| l == v),
            "prune output lacks {v}: {deleted}"
        );
    }
    ensure!(
        env.vm_state(A)? == "running",
        "prune touched the running VM"
    );
    for v in victims {
        env.fails(&["vm", "show", v], "no VM named")?;
        ensure!(
            !env.state_dir.join("vms").join(v).exists(),
            "prune left files of {v}"
        );
    }
    Ok(Outcome::Pass)
}

fn delete(env: &Env) -> anyhow::Result<Outcome> {
    const VM: &str = DEL.name;
    let v = env.vm_json(VM)?;
    let tap = v["tap"].as_str().unwrap_or_default().to_string();
    env.fails(&["vm", "delete", VM], "-f")?;
    ensure!(
        env.vm_state(VM)? == "running",
        "a refused delete changed the VM"
    );
    env.ok(&["vm", "delete", "-f", VM])?;
    env.fails(&["vm", "show", VM], "no VM named")?;
    ensure!(!env.vmm_running(VM), "VMM left");
    ensure!(!env.has_link(&tap)?, "tap left");
    ensure!(
        !env.state_dir.join("vms").join(VM).exists(),
        "VM directory left"
    );
    ensure!(
        !env.run_dir.join("vms").join(VM).exists(),
        "runtime directory left"
    );
    let kh = std::fs::read_to_string(env.state_dir.join("ssh/known_hosts"))?;
    ensure!(
        !kh.contains(&format!("banger-vm:{VM}")),
        "known_hosts line left"
    );
    ensure!(
        resolve(env, &format!("{VM}.vm"))?.is_none(),
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

fn dns(env: &Env) -> anyhow::Result<Outcome> {
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

fn ports(env: &Env) -> anyhow::Result<Outcome> {
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

fn nat(env: &Env) -> anyhow::Result<Outcome> {
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

fn ws_overlay(env: &Env) -> anyhow::Result<Outcome> {
    const VM: &str = WS.name;
    let (repo, head) = env.host_repo(VM)?;
    let repo_s = repo.to_string_lossy().into_owned();
    env.fails(&["workspace", "export", VM], "no workspace")?;
    env.fails(
        &[
            "workspace",
            "prepare",
            VM,
            "--repo",
            &env.dir.to_string_lossy(),
        ],
        "not a git repository",
    )?;
    let before = repo_fingerprint(&repo)?;
    env.ok(&["workspace", "prepare", VM, "--repo", &repo_s])?;
    ensure!(
        repo_fingerprint(&repo)? == before,
        "prepare modified the host repo"
    );
    let guest_head = env.sh(VM, "git -C /root/repo rev-parse HEAD")?;
    ensure!(
        guest_head.trim() == head,
        "guest HEAD {guest_head:?} != host {head}"
    );
    let log = env.sh(VM, "git -C /root/repo log --format=%s")?;
    ensure!(
        log.lines().collect::<Vec<_>>() == ["second", "first"],
        "history: {log:?}"
    );
    let readme = env.sh(VM, "cat /root/repo/README")?;
    ensure!(
        readme.contains("uncommitted"),
        "uncommitted edit missing: {readme:?}"
    );
    env.sh(
        VM,
        "test -f /root/repo/notes.txt && test ! -e /root/repo/main.o",
    )?;
    let fstype = env.sh(VM, "findmnt -n -o FSTYPE /root/repo")?;
    ensure!(
        fstype.trim() == "overlay",
        "/root/repo is {fstype:?}, not an overlay"
    );
    let ws = env.vm_json(VM)?["workspace"].clone();
    ensure!(
        ws["mode"] == "overlay" && ws["head"] == head.as_str(),
        "vm show workspace: {ws}"
    );
    env.fails(
        &["workspace", "prepare", VM, "--repo", &repo_s],
        "already has a workspace",
    )?;

    Ok(Outcome::Pass)
}

fn ws_export_plain(env: &Env) -> anyhow::Result<Outcome> {
    const VM: &str = WS_READY.name;
    let ws = env.vm_json(VM)?["workspace"].clone();
    ensure!(ws["mode"] == "overlay", "{VM}'s fixture workspace: {ws}");
    let (repo, _) = env.host_repo(VM)?;
    let repo_s = repo.to_string_lossy().into_owned();
    env.fails(&["workspace", "export", "nope"], "no VM named")?;
    env.fails(
        &["workspace", "export", VM, "--base-commit", "nothex"],
        "not a commit id",
    )?;
    // The guest starts from the host's work tree: a first export is
    // exactly the host's uncommitted state, ignored files left out.
    let first = env.ok(&["workspace", "export", VM])?;
    ensure!(
        first.contains("+hello from the host, uncommitted")
            && first.contains("notes.txt")
            && !first.contains("main.o"),
        "first export is not the host's uncommitted state:\n{first}"
    );
    env.sh(
        VM,
        "cd /root/repo && echo 'guest line' >> src/main.c && echo new > added.txt",
    )?;
    let patch = env.ok(&["workspace", "export", VM])?;
    ensure!(
        patch.contains("+guest line") && patch.contains("added.txt"),
        "patch lacks the guest's edits:\n{patch}"
    );
    let index_after = env.sh(VM, "git -C /root/repo status --porcelain")?;
    ensure!(
        index_after.contains("?? added.txt"),
        "export staged files in the guest: {index_after}"
    );
    // The patch applies to a clean checkout of the host's HEAD.
    let file = env.dir.join("plain.patch");
    env.ok(&["workspace", "export", VM, "-o", &file.to_string_lossy()])?;
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

fn ws_base_commit(env: &Env) -> anyhow::Result<Outcome> {
    const VM: &str = WS_READY.name;
    let ws = env.vm_json(VM)?["workspace"].clone();
    ensure!(ws["mode"] == "overlay", "{VM}'s fixture workspace: {ws}");
    let (repo, head) = env.host_repo(VM)?;
    env.sh(VM, "cd /root/repo && echo committed > guest-commit.txt && git add guest-commit.txt && git -c user.name=g -c user.email=g@g commit -q -m 'guest commit'")?;
    let plain = env.ok(&["workspace", "export", VM])?;
    ensure!(
        !plain.contains("guest-commit.txt"),
        "plain export contains the guest commit"
    );
    env.fails(
        &[
            "workspace",
            "export",
            VM,
            "--base-commit",
            "0123456789abcdef0123456789abcdef01234567",
        ],
        "not in the guest",
    )?;
    let full = env.dir.join("base.patch");
    env.ok(&[
        "workspace",
        "export",
        VM,
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
    let guest_tree = env.sh(VM, "cd /root/repo && export GIT_INDEX_FILE=$(mktemp -u) && git add -A . && git write-tree && rm -f $GIT_INDEX_FILE")?;
    ensure!(
        host_tree.trim() == guest_tree.trim(),
        "trees differ: host {host_tree} guest {guest_tree}"
    );
    Ok(Outcome::Pass)
}

fn ws_readonly(env: &Env) -> anyhow::Result<Outcome> {
    const VM: &str = RO.name;
    let (repo, _) = env.host_repo(VM)?;
    env.ok(&[
        "workspace",
        "prepare",
        VM,
        "--repo",
        &repo.to_string_lossy(),
        "--readonly",
    ])?;
    let writable = env.sh(
        VM,
        "find /root/repo -mindepth 1 ! -type l -perm /222 | head -5",
    )?;
    ensure!(
        writable.trim().is_empty(),
        "entries with write bits:\n{writable}"
    );
    let mode = env.sh(VM, "stat -c %a /root/repo/README /root/repo/src")?;
    ensure!(
        mode.split_whitespace().collect::<Vec<_>>() == ["444", "555"],
        "modes: {mode:?}"
    );
    ensure!(
        env.vm_json(VM)?["workspace"]["readonly"] == true,
        "vm show does not record readonly"
    );
    Ok(Outcome::Pass)
}

fn ws_full_copy(env: &Env) -> anyhow::Result<Outcome> {
    const VM: &str = FC.name;
    let (repo, head) = env.host_repo(VM)?;
    env.ok(&[
        "workspace",
        "prepare",
        VM,
        "--repo",
        &repo.to_string_lossy(),
        "--mode",
        "full_copy",
    ])?;
    let got = env.sh(
        VM,
        "cat /root/repo/README; git -C /root/repo rev-parse HEAD",
    )?;
    ensure!(
        got.contains("uncommitted") && got.contains(&head),
        "repo contents: {got:?}"
    );
    let mounted = env.banger(&["vm", "exec", VM, "--", "findmnt", "/root/repo"]);
    ensure!(
        !mounted.status.success(),
        "full_copy must not mount anything at /root/repo"
    );
    let fs = env.sh(VM, "findmnt -n -o TARGET --target /root/repo")?;
    ensure!(
        fs.trim() == "/",
        "/root/repo is not on the root filesystem: {fs:?}"
    );
    env.sh(VM, "echo edit >> /root/repo/README")?;
    let patch = env.ok(&["workspace", "export", VM])?;
    ensure!(patch.contains("+edit"), "full_copy export: {patch}");
    Ok(Outcome::Pass)
}

#[cfg(test)]
mod tests {
    use super::super::When;
    use super::*;

    /// The names CI and people know; a scenario is never renamed.
    const NAMES: [&str; 38] = [
        "daemon up",
        "image build",
        "bad input is refused without side effects",
        "a template is built after the first cold create",
        "vm create",
        "vm list and show",
        "vm ssh: strict pinned host key, exit code passes",
        "vm exec streams output, exit code passes",
        "vm logs show the boot",
        "workspace prepare (default overlay mode)",
        "workspace export (plain) of uncommitted edits",
        "workspace export --base-commit includes guest commits",
        "vm stop/start keeps guest data",
        "vm restart gives a fresh boot_id",
        "vm kill --signal KILL ends stopped and clean",
        "dns resolves NAME.vm, also after a daemon restart",
        "vm set-ttl: a daemon restart keeps the deadline",
        "vm ports shows sshd at NAME.vm:22",
        "nat rule: scoped, idempotent across stop/start, removed on delete",
        "ssh-config --install/--uninstall",
        "workspace prepare --readonly drops every write bit",
        "workspace prepare --mode full_copy",
        "vm prune -f keeps running VMs",
        "the VMM runs as its own uid, sandboxed",
        "guests reach only DNS of the host, and each other",
        "a group member uses their own VMs, and only those",
        "a guest cannot hold the daemon: 100 MB export streams, kill wins over a hung one",
        "restored VMs are each their own machine, side by side",
        "image build --include and --script, booted",
        "image create --from-vm keeps the VM's files",
        "one step: vm create --repo prepares; a bad repo makes no VM",
        "lifetime: vm create --ttl, the VM goes when it ends",
        "vm cp: a tree with a symlink, an executable and 12 MB, in and out unchanged",
        "vm exec -w/-e/-i/-t, quoted safely",
        "banger mcp: the official MCP Python SDK creates, runs, exports, deletes",
        "workspace export is exact after every kind of change, overlay and full_copy",
        "a VM on the copy disk strategy boots, keeps its data, leaves nothing",
        "vm delete leaves nothing behind",
    ];

    #[test]
    fn names_are_kept() {
        let names: Vec<&str> = ALL.iter().map(|s| s.name).collect();
        assert_eq!(names, NAMES);
        for a in ALWAYS {
            assert!(names.contains(a), "{a}");
        }
    }

    /// A VM passes from scenario to scenario in a fixed order: within a
    /// phase, the scenario that makes a VM comes before all that use it,
    /// and the users of one spec of a VM all come before the users of the
    /// next (each leaves it as the next spec says); a later phase may take
    /// a VM over. Only the shared VM has users at the same time.
    #[test]
    fn vms_pass_on_in_order() {
        let mut makers: Vec<&str> = Vec::new();
        for s in ALL {
            if s.when == When::First {
                assert!(s.vms.is_empty() && s.makes.is_empty(), "{}", s.name);
            }
            for vm in s.makes {
                assert!(banger_name(vm), "{vm}");
                assert!(!makers.contains(vm), "{vm} is made twice");
                makers.push(vm);
            }
            for spec in s.vms {
                assert!(banger_name(spec.name), "{}", spec.name);
                assert!(!spec.shared || spec.name == A, "{} is shared", spec.name);
            }
        }
        for when in [When::Together, When::Last] {
            let phase: Vec<&Scenario> = ALL.iter().filter(|s| s.when == when).collect();
            for (i, s) in phase.iter().enumerate() {
                for vm in s.makes {
                    for t in &phase[..i] {
                        assert!(
                            t.vms.iter().all(|v| v.name != *vm),
                            "{} uses {vm} before {} makes it",
                            t.name,
                            s.name
                        );
                    }
                }
                for spec in s.vms {
                    // After a user of another spec of this VM, no user of
                    // this spec comes again.
                    let mut left = false;
                    for t in &phase[i + 1..] {
                        for v in t.vms.iter().filter(|v| v.name == spec.name) {
                            left |= **v != **spec;
                            assert!(
                                !left || **v != **spec,
                                "{}: {} comes back to {}'s spec",
                                spec.name,
                                t.name,
                                s.name
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn each_waits_for_whom_it_must() {
        let together: Vec<&'static Scenario> =
            ALL.iter().filter(|s| s.when == When::Together).collect();
        let after = |name: &str| -> Vec<&str> {
            let i = together
                .iter()
                .position(|s| s.name.starts_with(name))
                .expect(name);
            together[..i]
                .iter()
                .filter(|t| super::super::waits_for(together[i], t))
                .map(|t| t.name)
                .collect()
        };
        assert_eq!(after("vm list and show"), ["vm create"]);
        assert_eq!(after("vm create"), Vec::<&str>::new());
        assert_eq!(after("nat rule"), ["vm create"]);
        assert_eq!(
            after("workspace export (plain)"),
            ["workspace prepare (default overlay mode)"]
        );
        assert_eq!(
            after("workspace export --base-commit"),
            ["workspace prepare (default overlay mode)"]
        );
        assert_eq!(after("vm restart"), Vec::<&str>::new());
    }

    fn banger_name(n: &str) -> bool {
        (1..=32).contains(&n.len())
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !n.starts_with('-')
            && !n.ends_with('-')
    }
}
