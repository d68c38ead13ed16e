//! The smoke environment: a namespace, a daemon with its own state, run and
//! image directories, and helpers that run the CLI inside the namespace.
//!
//! Scenarios run on several threads at once, so everything here works from
//! `&Env`. VMs come from fixtures ([`VmSpec`], [`Env::vm`]): a fixture
//! makes its VM when it does not exist yet in the state it names, and
//! leaves it alone when it does, so scenarios that only need "a running
//! VM" share one when they run together and still work alone. VM boots
//! (`vm create`, `vm start`, `vm restart`) take one of [`Env::boot_slots`]
//! slots: guests boot under software emulation, and too many boots at once
//! only slow every one of them down. A boot a scenario waits for goes
//! before the boot of a VM made ahead ([`ahead`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde_json::Value;

use crate::netns::NetNs;

pub const SUBNET: &str = "172.30.0.0/24";
pub const GATEWAY: &str = "172.30.0.1";

/// VM boots that may run at once: `BANGER_SMOKE_BOOTS`, or 2 (the suite's
/// machines have 2 cores, and a guest uses about half a core as it boots).
pub fn boot_slots() -> usize {
    std::env::var("BANGER_SMOKE_BOOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(2)
}

thread_local! {
    static AHEAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` as the making of VMs ahead: its boots give way to those a
/// scenario waits for.
pub fn ahead<R>(f: impl FnOnce() -> R) -> R {
    AHEAD.with(|a| a.set(true));
    let r = f();
    AHEAD.with(|a| a.set(false));
    r
}

/// A VM as a scenario needs it. A scenario has the VMs it declares to
/// itself while it runs, except a `shared` one: its users run at the same
/// time, so none of them may change its state. A scenario that stops,
/// kills, restarts, prunes or deletes a VM, or edits its workspace, holds
/// it alone and leaves it as the spec says, or has it to itself for good
/// (a later phase may then take it over with a spec of its own: `vm
/// prune` takes the stopped workspace VMs, `vm delete` the created one).
#[derive(Debug, PartialEq, Eq)]
pub struct VmSpec {
    pub name: &'static str,
    /// Extra `vm create` flags (e.g. `--nat`).
    pub create: &'static [&'static str],
    /// `workspace prepare` flags (after `--repo`, which is the VM's own
    /// host repo, [`Env::host_repo`]) when the fixture prepares a
    /// workspace; `None`: the fixture makes none.
    pub workspace: Option<&'static [&'static str]>,
    /// Whether the scenario starts from a stopped VM.
    pub stopped: bool,
    /// Whether several scenarios may use it at once.
    pub shared: bool,
}

impl VmSpec {
    /// A running VM with no workspace.
    pub const fn running(name: &'static str) -> VmSpec {
        VmSpec {
            name,
            create: &[],
            workspace: None,
            stopped: false,
            shared: false,
        }
    }

    /// The same, with a workspace prepared with these flags.
    pub const fn with_workspace(self, flags: &'static [&'static str]) -> VmSpec {
        VmSpec {
            workspace: Some(flags),
            ..self
        }
    }

    /// The same, stopped (after its workspace, if any, is prepared).
    pub const fn stopped(self) -> VmSpec {
        VmSpec {
            stopped: true,
            ..self
        }
    }

    /// The same, used by several scenarios at once.
    pub const fn shared(self) -> VmSpec {
        VmSpec {
            shared: true,
            ..self
        }
    }
}

pub struct Env {
    pub ns: NetNs,
    /// The socket's group, made for the suite (its members may use the
    /// daemon: the trust scenarios add one).
    pub group: String,
    pub banger: PathBuf,
    pub dir: PathBuf,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub image_dir: PathBuf,
    pub socket: PathBuf,
    daemon: Mutex<Option<Child>>,
    /// VMs made so far (for teardown).
    vms: Mutex<Vec<String>>,
    /// One lock per fixture VM: one thread makes it, the others wait.
    fixtures: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Host repos made so far, by VM.
    repos: Mutex<HashMap<String, Arc<Mutex<Option<String>>>>>,
    boots: Slots,
    pub boot_slots: usize,
}

/// A counting semaphore whose urgent takers go first.
struct Slots {
    /// Free slots, and urgent takers waiting.
    state: Mutex<(usize, usize)>,
    cv: Condvar,
}

struct Slot<'a>(&'a Slots);

impl Slots {
    fn new(n: usize) -> Slots {
        Slots {
            state: Mutex::new((n, 0)),
            cv: Condvar::new(),
        }
    }

    fn take(&self, urgent: bool) -> Slot<'_> {
        let mut st = lock(&self.state);
        st.1 += usize::from(urgent);
        while st.0 == 0 || (!urgent && st.1 > 0) {
            st = self.cv.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        st.1 -= usize::from(urgent);
        st.0 -= 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).0 += 1;
        self.0.cv.notify_all();
    }
}

/// Locks, ignoring poison (a panicking scenario thread must not take the
/// others down with it).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Env {
    pub fn start(banger: &Path, image_dir: Option<&Path>) -> anyhow::Result<Env> {
        super::stale::reap();
        let id = std::process::id();
        let dir = PathBuf::from(format!("/var/tmp/banger-smoke-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let ns = NetNs::create(&format!("banger-smoke-{id}"))?;
        ns.set_resolver(GATEWAY)?;
        let image_dir = image_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.join("images"));
        let group = format!("bgr-smoke-g{id}");
        let _ = Command::new("groupdel").arg(&group).output();
        crate::sh::quiet(&["groupadd", &group])?;
        let env = Env {
            ns,
            group,
            banger: banger.to_path_buf(),
            state_dir: dir.join("state"),
            run_dir: dir.join("run"),
            socket: dir.join("run/banger.sock"),
            image_dir,
            dir,
            daemon: Mutex::new(None),
            vms: Mutex::new(Vec::new()),
            fixtures: Mutex::new(HashMap::new()),
            repos: Mutex::new(HashMap::new()),
            boots: Slots::new(boot_slots()),
            boot_slots: boot_slots(),
        };
        env.start_daemon()?;
        Ok(env)
    }

    /// The daemon's pid, while it runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        lock(&self.daemon).as_ref().map(Child::id)
    }

    /// Starts the daemon inside the namespace and waits for its socket.
    pub fn start_daemon(&self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))?;
        // Image builds fetch Debian packages from the host's namespace (ours).
        let host_ns = format!("/proc/{}/ns/net", std::process::id());
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .arg(&self.banger)
            .arg("daemon")
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--run-dir")
            .arg(&self.run_dir)
            .arg("--image-dir")
            .arg(&self.image_dir)
            .args(["--subnet", SUBNET, "--build-netns", &host_ns])
            .args(["--socket-group", &self.group])
            .env("BANGER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the daemon")?;
        *lock(&self.daemon) = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.banger(&["vm", "list"]).status.success() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "the daemon did not answer within 30s; see {}",
            self.dir.join("daemon.log").display()
        )
    }

    /// Stops the daemon with SIGTERM (VMs keep running).
    pub fn stop_daemon(&self) {
        if let Some(mut child) = lock(&self.daemon).take() {
            // SAFETY: signalling our own child process.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let _ = child.wait();
        }
    }

    /// `banger ARGS` inside the namespace, not started (stdin null).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns.name])
            .arg(&self.banger)
            .args(args)
            .env("BANGER_SOCKET", &self.socket)
            .stdin(Stdio::null());
        c
    }

    /// Runs `banger ARGS` inside the namespace.
    pub fn banger(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run banger: {e}"))
    }

    /// Runs `banger ARGS`, which must succeed; returns stdout. A boot
    /// (`vm create`, `vm start`, `vm restart`) waits for a boot slot.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        self.timed(args).map(|(out, _)| out)
    }

    /// [`Env::ok`], also returning how long the command took once it had
    /// its boot slot.
    fn timed(&self, args: &[&str]) -> anyhow::Result<(String, Duration)> {
        let boots = matches!(args, ["vm", "create" | "start" | "restart", ..]);
        let urgent = !AHEAD.with(std::cell::Cell::get);
        let slot = boots.then(|| self.boots.take(urgent));
        let t = Instant::now();
        let out = self.banger(args);
        let took = t.elapsed();
        drop(slot);
        ensure!(
            out.status.success(),
            "`banger {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok((String::from_utf8_lossy(&out.stdout).into_owned(), took))
    }

    /// Runs `banger ARGS`, which must fail with a one-line error that
    /// contains `expect`; returns that line.
    pub fn fails(&self, args: &[&str], expect: &str) -> anyhow::Result<String> {
        let out = self.banger(args);
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        ensure!(
            !out.status.success(),
            "`banger {}` should have failed",
            args.join(" ")
        );
        ensure!(
            stderr.lines().count() == 1,
            "error is not one line: {stderr:?}"
        );
        ensure!(
            stderr.contains(expect),
            "error {stderr:?} does not mention {expect:?}"
        );
        Ok(stderr)
    }

    /// Runs a shell command in VM `vm`; must exit 0. Returns stdout.
    pub fn sh(&self, vm: &str, script: &str) -> anyhow::Result<String> {
        self.ok(&["vm", "exec", vm, "--", "sh", "-c", script])
    }

    /// The size of VM `vm`'s root filesystem, in GiB (`df`).
    pub fn root_fs_gib(&self, vm: &str) -> anyhow::Result<f64> {
        let out = self.sh(vm, "df --output=size -B1 / | tail -n 1")?;
        let bytes: f64 = out
            .trim()
            .parse()
            .with_context(|| format!("df in {vm} said {out:?}"))?;
        Ok(bytes / f64::from(1u32 << 30))
    }

    pub fn vm_json(&self, vm: &str) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(
            &self.ok(&["vm", "show", vm, "--json"])?,
        )?)
    }

    pub fn vm_state(&self, vm: &str) -> anyhow::Result<String> {
        Ok(self.vm_json(vm)?["state"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// VM `vm`'s state, or `None` when the daemon knows no such VM.
    fn state_if_any(&self, vm: &str) -> anyhow::Result<Option<String>> {
        let out = self.banger(&["vm", "show", vm, "--json"]);
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout)?;
            return Ok(Some(v["state"].as_str().unwrap_or_default().to_string()));
        }
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(err.contains("no VM named"), "vm show {vm}: {}", err.trim());
        Ok(None)
    }

    fn remember(&self, vm: &str) {
        let mut vms = lock(&self.vms);
        if !vms.iter().any(|v| v == vm) {
            vms.push(vm.to_string());
        }
    }

    /// Creates a VM (remembered for teardown).
    pub fn create(&self, vm: &str, extra: &[&str]) -> anyhow::Result<()> {
        self.create_timed(vm, extra).map(|_| ())
    }

    /// Creates a VM; returns how long `vm create` took once it had its boot
    /// slot (create to SSH).
    pub fn create_timed(&self, vm: &str, extra: &[&str]) -> anyhow::Result<Duration> {
        self.remember(vm);
        let mut args = vec!["vm", "create", "--name", vm, "--memory", "768"];
        args.extend_from_slice(extra);
        Ok(self.timed(&args)?.1)
    }

    /// Creates several VMs at once (boots overlap).
    pub fn create_parallel(&self, vms: &[&str]) -> anyhow::Result<()> {
        self.create_parallel_with(vms, &[])
    }

    /// [`Env::create_parallel`], each create with `extra` arguments.
    pub fn create_parallel_with(&self, vms: &[&str], extra: &[&str]) -> anyhow::Result<()> {
        let children: Vec<(String, Child)> = vms
            .iter()
            .map(|vm| {
                self.remember(vm);
                let mut args = vec!["vm", "create", "--name", vm, "--memory", "768"];
                args.extend_from_slice(extra);
                let child = self
                    .command(&args)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .with_context(|| format!("creating {vm}"))?;
                Ok((vm.to_string(), child))
            })
            .collect::<anyhow::Result<_>>()?;
        // Wait for every create before judging any.
        let results: Vec<(String, Output)> = children
            .into_iter()
            .map(|(vm, child)| Ok((vm, child.wait_with_output()?)))
            .collect::<anyhow::Result<_>>()?;
        for (vm, out) in results {
            ensure!(
                out.status.success(),
                "creating {vm}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// The fixture: makes VM `spec.name` exist in the state `spec` names,
    /// doing only what is missing (create, start, prepare the workspace,
    /// stop). A VM in any other state (failed, half made) is deleted and
    /// made again. Callers for one VM wait for each other. Returns what it
    /// did, for the report.
    pub fn vm(&self, spec: &VmSpec) -> anyhow::Result<String> {
        let name = spec.name;
        let held = Arc::clone(lock(&self.fixtures).entry(name.to_string()).or_default());
        let _held = lock(&held);
        self.remember(name);
        let t = Instant::now();
        let mut did = Vec::new();
        let mut state = self.state_if_any(name)?;
        if let Some(s) = state
            .as_deref()
            .filter(|s| !["running", "stopped"].contains(s))
        {
            did.push(format!("was {s}, deleted"));
            self.ok(&["vm", "delete", "-f", name])?;
            state = None;
        }
        let mut running = match state.as_deref() {
            None => {
                self.create(name, spec.create)?;
                did.push("created".into());
                true
            }
            Some(s) => s == "running",
        };
        if let Some(flags) = spec.workspace {
            if self.vm_json(name)?["workspace"].is_null() {
                if !running {
                    self.ok(&["vm", "start", name])?;
                    did.push("started".into());
                    running = true;
                }
                let (repo, _) = self.host_repo(name)?;
                let repo = repo.to_string_lossy().into_owned();
                let mut args = vec!["workspace", "prepare", name, "--repo", &repo];
                args.extend_from_slice(flags);
                self.ok(&args)?;
                did.push("workspace prepared".into());
            }
        }
        if running && spec.stopped {
            self.ok(&["vm", "stop", name])?;
            did.push("stopped".into());
        } else if !running && !spec.stopped {
            self.ok(&["vm", "start", name])?;
            did.push("started".into());
        }
        Ok(if did.is_empty() {
            "ready".into()
        } else {
            format!("{} ({:.1}s)", did.join(", "), t.elapsed().as_secs_f64())
        })
    }

    /// The host repo VM `vm`'s workspace comes from (each VM has its own, so
    /// one scenario's checks on it see no other scenario's work): history,
    /// an uncommitted edit, an untracked and an ignored file. Returns it
    /// and its HEAD.
    pub fn host_repo(&self, vm: &str) -> anyhow::Result<(PathBuf, String)> {
        let cell = Arc::clone(lock(&self.repos).entry(vm.to_string()).or_default());
        let mut head = lock(&cell);
        let repo = self.dir.join("repos").join(vm);
        if let Some(h) = head.as_ref() {
            return Ok((repo, h.clone()));
        }
        let _ = std::fs::remove_dir_all(&repo);
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
        let h = git(&["rev-parse", "HEAD"])?.trim().to_string();
        *head = Some(h.clone());
        Ok((repo, h))
    }

    /// Links in the namespace (to check taps).
    pub fn links(&self) -> anyhow::Result<String> {
        self.ns.run(&["ip", "-o", "link", "show"])
    }

    /// Whether the namespace has a link named exactly `name` (`tap1` is
    /// not `tap12`).
    pub fn has_link(&self, name: &str) -> anyhow::Result<bool> {
        Ok(link_named(&self.links()?, name))
    }

    /// Whether any process carries VM `vm`'s tag.
    pub fn vmm_running(&self, vm: &str) -> bool {
        let tag = format!("banger-vm={vm}");
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .chars()
                    .all(|c| c.is_ascii_digit())
            })
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .any(|raw| {
                let s = String::from_utf8_lossy(&raw);
                s.contains(&*self.state_dir.to_string_lossy())
                    && s.split(['\0', ' ']).any(|t| t == tag)
            })
    }

    /// The consoles of `vms` and the daemon log's end, indented, for a
    /// failed scenario's report.
    pub fn diagnostics(&self, vms: &[&str]) -> String {
        let mut out = String::new();
        for vm in vms {
            let log = self.state_dir.join("vms").join(vm).join("console.log");
            if let Ok(text) = std::fs::read_to_string(&log) {
                out.push_str(&format!("    --- console of {vm} (last 15 lines)\n"));
                for l in tail(&text, 15) {
                    out.push_str(&format!("    | {l}\n"));
                }
            }
        }
        if let Ok(text) = std::fs::read_to_string(self.dir.join("daemon.log")) {
            out.push_str("    --- daemon log (last 20 lines)\n");
            for l in tail(&text, 20) {
                out.push_str(&format!("    | {l}\n"));
            }
        }
        out
    }

    /// Deletes every VM (all at once), stops the daemon, kills any VMM
    /// left, removes the namespace and the work directory (a kept image
    /// directory is outside it).
    pub fn teardown(&mut self) {
        if let Ok(out) = self.ok(&["vm", "list", "--json"]) {
            if let Ok(Value::Array(vms)) = serde_json::from_str::<Value>(&out) {
                let children: Vec<Child> = vms
                    .iter()
                    .filter_map(|vm| vm["name"].as_str())
                    .filter_map(|name| {
                        self.command(&["vm", "delete", "-f", name])
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .spawn()
                            .ok()
                    })
                    .collect();
                for mut c in children {
                    let _ = c.wait();
                }
            }
        }
        self.stop_daemon();
        for vm in lock(&self.vms).clone() {
            if self.vmm_running(&vm) {
                eprintln!("smoke: VMM of {vm} still running after teardown; killing it");
                let _ = Command::new("pkill")
                    .args(["-KILL", "-f", &format!("banger-vm={vm}")])
                    .status();
            }
        }
        let _ = Command::new("groupdel").arg(&self.group).output();
        // A kept image directory (--keep-image) lives outside the work
        // directory, so the whole work directory goes.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `ip -o link show` output has a link named exactly `name`.
fn link_named(links: &str, name: &str) -> bool {
    links.lines().any(|l| {
        l.split(": ")
            .nth(1)
            .map(|n| n.split('@').next().unwrap_or(n))
            == Some(name)
    })
}

fn tail(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

impl Drop for Env {
    fn drop(&mut self) {
        if lock(&self.daemon).is_some() {
            self.teardown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_match_by_whole_name() {
        let links = "1: lo: <LOOPBACK,UP> mtu 65536\n\
                     12: tap12: <BROADCAST> mtu 1500 master banger0\n\
                     13: veth0@if2: <BROADCAST> mtu 1500";
        assert!(link_named(links, "tap12"));
        assert!(!link_named(links, "tap1"));
        assert!(link_named(links, "veth0"));
        assert!(!link_named(links, "mtu"));
    }

    #[test]
    fn slots_bound_what_runs_at_once() {
        let slots = Slots::new(2);
        let most = Mutex::new((0usize, 0usize));
        std::thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| {
                    let _slot = slots.take(false);
                    {
                        let mut m = lock(&most);
                        m.0 += 1;
                        m.1 = m.1.max(m.0);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    lock(&most).0 -= 1;
                });
            }
        });
        assert_eq!(lock(&most).1, 2);
        assert_eq!(*lock(&slots.state), (2, 0));
    }

    #[test]
    fn urgent_takers_go_first() {
        let slots = Slots::new(1);
        let order = Mutex::new(Vec::new());
        let held = slots.take(true);
        std::thread::scope(|s| {
            s.spawn(|| {
                let _slot = slots.take(false);
                lock(&order).push("ahead");
            });
            std::thread::sleep(Duration::from_millis(50));
            s.spawn(|| {
                let _slot = slots.take(true);
                lock(&order).push("urgent");
            });
            std::thread::sleep(Duration::from_millis(50));
            drop(held);
        });
        assert_eq!(*lock(&order), ["urgent", "ahead"]);
    }
}
