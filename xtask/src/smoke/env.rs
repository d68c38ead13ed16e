//! The smoke environment: a namespace, a daemon with its own state, run and
//! image directories, and helpers that run the CLI inside the namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde_json::Value;

use crate::netns::NetNs;

pub const SUBNET: &str = "172.30.0.0/24";
pub const GATEWAY: &str = "172.30.0.1";

pub struct Env {
    pub ns: NetNs,
    pub banger: PathBuf,
    pub dir: PathBuf,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub image_dir: PathBuf,
    pub socket: PathBuf,
    daemon: Option<Child>,
    /// VMs scenarios should show diagnostics for.
    pub vms: Vec<String>,
}

impl Env {
    pub fn start(banger: &Path, image_dir: Option<&Path>) -> anyhow::Result<Env> {
        let id = std::process::id();
        let dir = PathBuf::from(format!("/var/tmp/banger-smoke-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let ns = NetNs::create(&format!("banger-smoke-{id}"))?;
        ns.set_resolver(GATEWAY)?;
        let image_dir = image_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.join("images"));
        let mut env = Env {
            ns,
            banger: banger.to_path_buf(),
            state_dir: dir.join("state"),
            run_dir: dir.join("run"),
            socket: dir.join("run/banger.sock"),
            image_dir,
            dir,
            daemon: None,
            vms: Vec::new(),
        };
        env.start_daemon()?;
        Ok(env)
    }

    /// Starts the daemon inside the namespace and waits for its socket.
    pub fn start_daemon(&mut self) -> anyhow::Result<()> {
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
            .env("BANGER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the daemon")?;
        self.daemon = Some(child);
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
    pub fn stop_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            // SAFETY: signalling our own child process.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let _ = child.wait();
        }
    }

    /// Runs `banger ARGS` inside the namespace.
    pub fn banger(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .arg(&self.banger)
            .args(args)
            .env("BANGER_SOCKET", &self.socket)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run banger: {e}"))
    }

    /// Runs `banger ARGS`, which must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.banger(args);
        ensure!(
            out.status.success(),
            "`banger {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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

    /// Creates a VM (remembered for diagnostics).
    pub fn create(&mut self, vm: &str, extra: &[&str]) -> anyhow::Result<()> {
        self.vms.push(vm.to_string());
        let mut args = vec!["vm", "create", "--name", vm, "--memory", "768"];
        args.extend_from_slice(extra);
        self.ok(&args)?;
        Ok(())
    }

    /// Creates several VMs at once (boots overlap).
    pub fn create_parallel(&mut self, vms: &[&str]) -> anyhow::Result<()> {
        let children: Vec<(String, std::process::Child)> = vms
            .iter()
            .map(|vm| {
                self.vms.push(vm.to_string());
                let child = Command::new("ip")
                    .args(["netns", "exec", &self.ns.name])
                    .arg(&self.banger)
                    .args(["vm", "create", "--name", vm, "--memory", "768"])
                    .env("BANGER_SOCKET", &self.socket)
                    .stdin(Stdio::null())
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

    /// Links in the namespace (to check taps).
    pub fn links(&self) -> anyhow::Result<String> {
        self.ns.run(&["ip", "-o", "link", "show"])
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

    pub fn print_diagnostics(&self) {
        for vm in &self.vms {
            let log = self.state_dir.join("vms").join(vm).join("console.log");
            if let Ok(text) = std::fs::read_to_string(&log) {
                println!("    --- console of {vm} (last 15 lines)");
                for l in tail(&text, 15) {
                    println!("    | {l}");
                }
            }
        }
        if let Ok(text) = std::fs::read_to_string(self.dir.join("daemon.log")) {
            println!("    --- daemon log (last 20 lines)");
            for l in tail(&text, 20) {
                println!("    | {l}");
            }
        }
    }

    /// Deletes every VM, stops the daemon, kills any VMM left, removes the
    /// namespace and the work directory (a kept image directory is outside it).
    pub fn teardown(&mut self) {
        if let Ok(out) = self.ok(&["vm", "list", "--json"]) {
            if let Ok(Value::Array(vms)) = serde_json::from_str::<Value>(&out) {
                for vm in vms {
                    if let Some(name) = vm["name"].as_str() {
                        let _ = self.banger(&["vm", "delete", "-f", name]);
                    }
                }
            }
        }
        self.stop_daemon();
        for vm in self.vms.clone() {
            if self.vmm_running(&vm) {
                eprintln!("smoke: VMM of {vm} still running after teardown; killing it");
                let _ = Command::new("pkill")
                    .args(["-KILL", "-f", &format!("banger-vm={vm}")])
                    .status();
            }
        }
        // A kept image directory (--keep-image) lives outside the work
        // directory, so the whole work directory goes.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tail(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

impl Drop for Env {
    fn drop(&mut self) {
        if self.daemon.is_some() {
            self.teardown();
        }
    }
}
