//! Trust scenarios, as an attacker would try them: the VMM's privileges, a
//! guest knocking on the host, an unprivileged member of the socket's
//! group, and a guest that tries to hold the daemon.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde_json::Value;

use super::env::GATEWAY;
use super::{note, Env, Outcome};

/// A uid and a process's `/proc/PID/status` fields.
fn status_field(pid: u64, field: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

pub fn vmm_unprivileged(env: &Env, vm: &str) -> anyhow::Result<Outcome> {
    let pid = env.vm_json(vm)?["pid"]
        .as_u64()
        .context("a running VM shows its VMM's pid")?;
    let uid = status_field(pid, "Uid")?;
    let real: u32 = uid.split_whitespace().next().unwrap_or("0").parse()?;
    ensure!(
        uid.split_whitespace().all(|u| u != "0"),
        "the VMM (pid {pid}) runs as root: Uid {uid}"
    );
    ensure!(
        status_field(pid, "Seccomp")? == "2",
        "the VMM is not under a seccomp filter"
    );
    ensure!(
        status_field(pid, "NoNewPrivs")? == "1",
        "the VMM could gain privileges"
    );
    ensure!(
        status_field(pid, "CapEff")?
            .trim_start_matches('0')
            .is_empty(),
        "the VMM has capabilities"
    );
    note(format!(
        "VMM pid {pid}: uid {real}, seccomp filter, no new privileges, no capabilities"
    ));
    Ok(Outcome::Pass)
}

/// A TCP listener in the namespace on `addr:port` for `secs` seconds,
/// which writes `accepted` to `mark` when anyone connects.
fn listener(
    env: &Env,
    addr: &str,
    port: u16,
    secs: u32,
    mark: &Path,
) -> anyhow::Result<std::process::Child> {
    let code = format!(
        "import socket,sys\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('{addr}',{port}))\ns.listen(4)\ns.settimeout({secs})\n\
         try:\n  c,_=s.accept()\n  open('{}','w').write('accepted')\nexcept Exception:\n  pass\n",
        mark.display()
    );
    Ok(Command::new("ip")
        .args(["netns", "exec", &env.ns.name, "python3", "-c", &code])
        .stdin(Stdio::null())
        .spawn()?)
}

/// Whether a TCP connection from `vm` to `addr:port` opens within 4 s.
fn guest_connects(env: &Env, vm: &str, addr: &str, port: u16) -> anyhow::Result<bool> {
    let out = env.sh(
        vm,
        &format!("timeout 4 bash -c 'exec 3<>/dev/tcp/{addr}/{port}' 2>/dev/null && echo open || echo closed"),
    )?;
    Ok(out.trim() == "open")
}

/// From a guest: the host's services on the bridge address and on another
/// host address are closed, DNS on the bridge answers; another guest on
/// the bridge is reachable (the documented choice).
pub fn guests_reach_only_dns(env: &Env, vm: &str, other: &str) -> anyhow::Result<Outcome> {
    let other_addr = "10.213.0.1";
    // Another address of the host's, away from the bridge.
    let host_addr = format!("{other_addr}/32");
    env.ns
        .run(&["ip", "addr", "add", &host_addr, "dev", "lo"])?;
    let result = (|| {
        for (addr, port) in [(GATEWAY, 8099), (other_addr, 8098)] {
            let mark = env.dir.join(format!("accepted-{port}"));
            let _ = std::fs::remove_file(&mark);
            let mut l = listener(env, addr, port, 30, &mark)?;
            std::thread::sleep(Duration::from_millis(500));
            let reached = guest_connects(env, vm, addr, port)?;
            // The listener was there: the host itself reaches it.
            let from_host = env
                .ns
                .run(&[
                    "python3",
                    "-c",
                    &format!("import socket; socket.create_connection(('{addr}',{port}),3)"),
                ])
                .is_ok();
            let _ = l.kill();
            let _ = l.wait();
            ensure!(
                from_host,
                "the test listener on {addr}:{port} did not listen"
            );
            ensure!(
                !reached,
                "a guest reached the host's service on {addr}:{port}"
            );
        }
        let dns = env.sh(vm, &format!("getent hosts {other}.vm"))?;
        ensure!(
            !dns.trim().is_empty(),
            "DNS on the bridge does not answer the guest"
        );
        let other_ip = env.vm_json(other)?["ip"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        ensure!(
            guest_connects(env, vm, &other_ip, 22)?,
            "guests on one bridge should reach each other (docs/SECURITY.md)"
        );
        note(format!(
            "closed: {GATEWAY}:8099, {other_addr}:8098; open: DNS, {other}:22"
        ));
        Ok(Outcome::Pass)
    })();
    let _ = env.ns.run(&["ip", "addr", "del", &host_addr, "dev", "lo"]);
    result
}

/// A user made for the scenario (in the socket's group), removed on drop.
struct Member<'a> {
    env: &'a Env,
    name: String,
    home: std::path::PathBuf,
    /// A copy of the CLI the user can run (the build may sit in a
    /// directory only root can enter, as CI's clone does).
    banger: std::path::PathBuf,
}

impl<'a> Member<'a> {
    fn create(env: &'a Env) -> anyhow::Result<Member<'a>> {
        let name = format!("bgr-smoke-{}", std::process::id());
        let home = env.dir.join("home-member");
        let _ = Command::new("userdel").arg(&name).output();
        let ok = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/bin/sh", "--home-dir"])
            .arg(&home)
            .args(["--groups", &env.group])
            .arg(&name)
            .status()?
            .success();
        ensure!(ok, "useradd {name}");
        std::fs::create_dir_all(&home)?;
        crate::sh::quiet(&["chown", &format!("{name}:"), &home.display().to_string()])?;
        let bin = env.dir.join("member-bin");
        std::fs::create_dir_all(&bin)?;
        let banger = bin.join("banger");
        std::fs::copy(&env.banger, &banger)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
        std::fs::set_permissions(&banger, std::fs::Permissions::from_mode(0o755))?;
        Ok(Member {
            env,
            name,
            home,
            banger,
        })
    }

    /// `banger ARGS` as this user, in the namespace.
    fn banger(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.env.ns.name])
            .args([
                "setpriv",
                "--reuid",
                &self.name,
                "--regid",
                &self.name,
                "--init-groups",
                "--",
            ])
            .arg("env")
            .arg(format!("HOME={}", self.home.display()))
            .arg(format!("BANGER_SOCKET={}", self.env.socket.display()))
            .arg("PATH=/usr/local/bin:/usr/bin:/bin")
            .arg(&self.banger)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run banger: {e}"))
    }

    fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.banger(args);
        ensure!(
            out.status.success(),
            "as {}: `banger {}` failed: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn fails(&self, args: &[&str], expect: &str) -> anyhow::Result<()> {
        let out = self.banger(args);
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && err.contains(expect),
            "as {}: `banger {}` should fail with {expect:?}: {}",
            self.name,
            args.join(" "),
            err.trim()
        );
        Ok(())
    }
}

impl Drop for Member<'_> {
    fn drop(&mut self) {
        let _ = self.env.banger(&["vm", "delete", "-f", "smoke-member"]);
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// A member of the socket's group uses their own VM end to end, with
/// their own key, and cannot see root's VM, read root's files through
/// banger, or change images.
pub fn group_member(env: &Env, roots_vm: &str) -> anyhow::Result<Outcome> {
    let member = Member::create(env)?;
    member.ok(&["vm", "create", "--name", "smoke-member", "--memory", "768"])?;
    let list: Value = serde_json::from_str(&member.ok(&["vm", "list", "--json"])?)?;
    let names: Vec<&str> = list
        .as_array()
        .map(|a| a.iter().filter_map(|v| v["name"].as_str()).collect())
        .unwrap_or_default();
    ensure!(names == ["smoke-member"], "the member sees {names:?}");
    member.fails(&["vm", "show", roots_vm], "no VM named")?;
    member.fails(&["vm", "stop", roots_vm], "no VM named")?;
    ensure!(
        member
            .ok(&["vm", "exec", "smoke-member", "--", "id", "-u"])?
            .trim()
            == "0",
        "vm exec as the member"
    );
    ensure!(
        member
            .ok(&["vm", "logs", "smoke-member"])?
            .contains("Linux version"),
        "vm logs as the member"
    );
    // Plain `ssh NAME.vm` with their own config, key and known_hosts.
    member.ok(&["ssh-config", "--install"])?;
    let config = member.home.join(".ssh/config");
    let ssh = Command::new("ip")
        .args(["netns", "exec", &env.ns.name])
        .args([
            "setpriv",
            "--reuid",
            &member.name,
            "--regid",
            &member.name,
            "--init-groups",
            "--",
        ])
        .arg("ssh")
        .arg("-F")
        .arg(&config)
        .args(["-o", "BatchMode=yes", "smoke-member.vm", "echo via-ssh"])
        .env("HOME", &member.home)
        .output()?;
    ensure!(
        String::from_utf8_lossy(&ssh.stdout).contains("via-ssh"),
        "plain ssh smoke-member.vm as the member: {}",
        String::from_utf8_lossy(&ssh.stderr).trim()
    );
    // Their own repo goes in and comes back; root's private one does not.
    let repo = member.home.join("repo");
    std::fs::create_dir_all(&repo)?;
    std::fs::write(repo.join("README"), "member\n")?;
    crate::sh::quiet(&[
        "chown",
        "-R",
        &format!("{}:", member.name),
        &repo.display().to_string(),
    ])?;
    let git = |args: &[&str]| {
        let mut argv = vec![
            "setpriv",
            "--reuid",
            &member.name,
            "--regid",
            &member.name,
            "--clear-groups",
            "--",
            "git",
            "-C",
        ];
        let r = repo.display().to_string();
        argv.push(&r);
        argv.extend(["-c", "user.name=m", "-c", "user.email=m@m"]);
        argv.extend_from_slice(args);
        crate::sh::quiet(&argv)
    };
    git(&["init", "-q"])?;
    git(&["add", "README"])?;
    git(&["commit", "-q", "-m", "first"])?;
    std::fs::write(repo.join("README"), "member, edited\n")?;
    member.ok(&[
        "workspace",
        "prepare",
        "smoke-member",
        "--repo",
        &repo.display().to_string(),
        "--mode",
        "full_copy",
    ])?;
    let patch = member.ok(&["workspace", "export", "smoke-member"])?;
    ensure!(
        patch.contains("+member, edited"),
        "the member's export: {patch}"
    );
    let (secret, _) = env.host_repo("smoke-member-secret")?;
    std::fs::write(secret.join("id_ed25519"), "PRIVATE KEY")?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700))?;
    member.fails(
        &[
            "workspace",
            "prepare",
            "smoke-member",
            "--repo",
            &secret.display().to_string(),
        ],
        "that you can read",
    )?;
    member.fails(&["image", "build", "mine"], "run it as root")?;
    member.ok(&["vm", "delete", "-f", "smoke-member"])?;
    note("the member: own VM, exec, logs, ssh NAME.vm, workspace round trip; not root's VM, repo or images".to_string());
    Ok(Outcome::Pass)
}

const HOG: &str = "smoke-hog";

/// A guest cannot hold the daemon: a 100 MB patch streams through it in
/// bounded memory, and `vm kill` wins over an export the guest hangs.
pub fn guest_cannot_hold(env: &Env) -> anyhow::Result<Outcome> {
    env.create(HOG, &[])?;
    let (repo, _) = env.host_repo(HOG)?;
    env.ok(&[
        "workspace",
        "prepare",
        HOG,
        "--repo",
        &repo.display().to_string(),
        "--mode",
        "full_copy",
    ])?;
    env.sh(HOG, "head -c 85000000 /dev/urandom > /root/repo/big.bin")?;
    let daemon = daemon_pid(env)?;
    let before = rss_kib(daemon, "VmRSS")?;
    let out = env.dir.join("big.patch");
    let t = Instant::now();
    env.ok(&["workspace", "export", HOG, "-o", &out.display().to_string()])?;
    let size = std::fs::metadata(&out)?.len();
    let peak = rss_kib(daemon, "VmHWM")?;
    ensure!(
        size > 100_000_000,
        "the patch is {size} bytes, not over 100 MB"
    );
    ensure!(
        peak < 64 * 1024,
        "the daemon's peak RSS reached {} MiB exporting {} MB",
        peak / 1024,
        size / 1_000_000
    );
    note(format!(
        "{} MB patch in {:.1}s; daemon RSS {} MiB before, peak {} MiB",
        size / 1_000_000,
        t.elapsed().as_secs_f64(),
        before / 1024,
        peak / 1024
    ));
    let _ = std::fs::remove_file(&out);
    // The guest now hangs its git: the export holds the VM until killed.
    env.sh(HOG, "printf '#!/bin/sh\\nexec sleep 3600\\n' > /usr/local/bin/git && chmod +x /usr/local/bin/git")?;
    let mut export = Command::new("ip")
        .args(["netns", "exec", &env.ns.name])
        .arg(&env.banger)
        .args(["workspace", "export", HOG])
        .env("BANGER_SOCKET", &env.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(5));
    ensure!(
        export.try_wait()?.is_none(),
        "the hung export ended by itself"
    );
    let t = Instant::now();
    env.ok(&["vm", "kill", HOG])?;
    let killed = t.elapsed();
    let ended = export.wait_with_output()?;
    ensure!(!ended.status.success(), "the cancelled export succeeded");
    let why = String::from_utf8_lossy(&ended.stderr);
    ensure!(why.contains("cancelled"), "the export said: {why}");
    ensure!(
        env.vm_state(HOG)? == "stopped",
        "after kill: {}",
        env.vm_state(HOG)?
    );
    env.ok(&["vm", "delete", HOG])?;
    note(format!(
        "vm kill won over the hung export in {:.1}s",
        killed.as_secs_f64()
    ));
    Ok(Outcome::Pass)
}

/// The daemon's pid (`ip netns exec` execs it).
fn daemon_pid(env: &Env) -> anyhow::Result<u64> {
    let pattern = format!("daemon --state-dir {}", env.state_dir.display());
    let out = crate::sh::quiet(&["pgrep", "-f", &pattern])?;
    match out.split_whitespace().next() {
        Some(p) => Ok(p.parse()?),
        None => bail!("no daemon process for {}", env.state_dir.display()),
    }
}

fn rss_kib(pid: u64, field: &str) -> anyhow::Result<u64> {
    Ok(status_field(pid, field)?
        .trim_end_matches("kB")
        .trim()
        .parse()?)
}
