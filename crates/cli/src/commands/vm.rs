//! `banger vm ...`: create, start, stop, restart, kill, delete, prune, list,
//! show, logs, ssh, exec (options in `exec.rs`), cp (in `cp.rs`).

use std::io::{IsTerminal, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use banger_api::{validate_vm_name, Request, SshInfo, VmInfo, VmSpec};
use clap::Subcommand;

use super::exec::ExecOptions;
use crate::{output, rpc, useraccess};

#[derive(Subcommand)]
pub enum VmCommand {
    /// Create a VM and boot it; returns when SSH answers.
    Create {
        #[arg(long)]
        name: String,
        /// Let the guest reach beyond the bridge (MASQUERADE).
        #[arg(long)]
        nat: bool,
        #[arg(long, default_value_t = 1)]
        cpus: u32,
        /// Memory in MiB.
        #[arg(long, default_value_t = 1024)]
        memory: u32,
        /// Root disk size in GiB.
        #[arg(long, default_value_t = 4)]
        disk: u32,
        #[arg(long, default_value = "default")]
        image: String,
        /// Boot cold, even when a template of this shape could restore it.
        #[arg(long)]
        cold: bool,
        /// How the root disk is made: auto, qcow2, dm-snapshot, reflink or
        /// copy (default: the daemon's --disk-strategy).
        #[arg(long)]
        disk_strategy: Option<String>,
        #[command(flatten)]
        extra: super::vmcreate::CreateExtra,
    },
    /// Set how long a VM lives from now (90s, 30m, 2h, 1d), or `none`.
    SetTtl {
        name: String,
        #[arg(value_name = "DURATION|none")]
        ttl: String,
    },
    /// Boot a stopped VM.
    Start { name: String },
    /// Shut a VM down gracefully (Ctrl-Alt-Del), forcing it after a timeout.
    Stop { name: String },
    /// Reboot a VM: graceful stop, then start; the guest gets a fresh boot.
    Restart { name: String },
    /// Signal the VMM (default KILL); the VM ends stopped.
    Kill {
        name: String,
        #[arg(long, default_value = "KILL")]
        signal: String,
    },
    /// Delete a VM and everything it owns; -f stops a running one first.
    Delete {
        name: String,
        #[arg(short, long)]
        force: bool,
    },
    /// Delete every VM that is not running.
    Prune {
        #[arg(short, long)]
        force: bool,
    },
    /// List VMs.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one VM.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// List the guest's listening sockets with their processes.
    Ports {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Print the serial console; -f follows it.
    Logs {
        name: String,
        #[arg(short, long)]
        follow: bool,
        /// One JSON object per read: `text` (lossy UTF-8), `offset`, `next_offset`.
        #[arg(long)]
        json: bool,
    },
    /// Open a shell (or run CMD) over SSH; the exit code passes through.
    Ssh {
        name: String,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Run a command; output streams, the exit code passes through.
    Exec {
        name: String,
        /// Run the command in DIR (exit 126 when the guest has no DIR).
        #[arg(short = 'w', long, value_name = "DIR")]
        workdir: Option<String>,
        /// Set a variable (repeatable); NAME alone takes this shell's value.
        #[arg(short = 'e', long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// Pass stdin through to the command (streamed).
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Give the command a terminal (ssh -tt).
        #[arg(short = 't', long)]
        tty: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Copy files or directories between the host and a VM (one side
    /// VM:PATH), modes and symlinks kept, as `docker cp`.
    Cp {
        /// HOST_PATH or VM:PATH (DIR/. copies a directory's contents).
        src: String,
        /// VM:PATH or HOST_PATH; into an existing directory, the copy goes inside.
        dest: String,
    },
}

pub fn run(cmd: VmCommand, socket: &Path) -> anyhow::Result<i32> {
    match cmd {
        VmCommand::Create {
            name,
            nat,
            cpus,
            memory,
            disk,
            image,
            cold,
            disk_strategy,
            extra,
        } => {
            validate_vm_name(&name)?;
            let (ttl_secs, workspace) = extra.parse()?;
            let spec = VmSpec {
                name,
                cpus,
                memory_mib: memory,
                disk_gib: disk,
                image,
                nat,
                authorized_keys: Vec::new(),
                cold,
                disk_strategy,
                ttl_secs,
                workspace,
            };
            let vm = create(socket, spec)?;
            eprintln!(
                "{} is running at {} (ssh: banger vm ssh {})",
                vm.name, vm.ip, vm.name
            );
            if let Some(ws) = &vm.workspace {
                eprintln!(
                    "{} is at /root/repo ({}, HEAD {})",
                    ws.source, ws.mode, ws.head
                );
            }
            if let Some(at) = vm.expires_at {
                eprintln!("{} is deleted in {}", vm.name, super::vmcreate::left(at));
            }
        }
        VmCommand::SetTtl { name, ttl } => return super::vmcreate::set_ttl(socket, &name, &ttl),
        VmCommand::Start { name } => state_change(
            socket,
            &name,
            Request::VmStart { name: name.clone() },
            "started",
        )?,
        VmCommand::Stop { name } => state_change(
            socket,
            &name,
            Request::VmStop { name: name.clone() },
            "stopped",
        )?,
        VmCommand::Restart { name } => state_change(
            socket,
            &name,
            Request::VmRestart { name: name.clone() },
            "restarted",
        )?,
        VmCommand::Kill { name, signal } => state_change(
            socket,
            &name,
            Request::VmKill {
                name: name.clone(),
                signal,
            },
            "killed",
        )?,
        VmCommand::Delete { name, force } => {
            validate_vm_name(&name)?;
            let _: serde_json::Value = rpc::call(
                socket,
                &Request::VmDelete {
                    name: name.clone(),
                    force,
                },
            )?;
            eprintln!("deleted {name}");
        }
        VmCommand::Prune { force } => return prune(socket, force),
        VmCommand::List { json } => {
            let vms: Vec<VmInfo> = rpc::call(socket, &Request::VmList)?;
            if json {
                output::print_json(&vms)?;
            } else {
                output::vm_table(&vms);
            }
        }
        VmCommand::Show { name, json } => {
            validate_vm_name(&name)?;
            let vm: VmInfo = rpc::call(socket, &Request::VmShow { name })?;
            if json {
                output::print_json(&vm)?;
            } else {
                output::vm_details(&vm);
            }
        }
        VmCommand::Ports { name, json } => {
            validate_vm_name(&name)?;
            let ports: Vec<banger_api::PortInfo> = rpc::call(socket, &Request::VmPorts { name })?;
            if json {
                output::print_json(&ports)?;
            } else {
                let rows: Vec<Vec<String>> = ports
                    .iter()
                    .map(|p| vec![p.proto.clone(), p.endpoint.clone(), p.process.clone()])
                    .collect();
                output::table(&["PROTO", "ENDPOINT", "PROCESS"], &rows);
            }
        }
        VmCommand::Logs { name, follow, json } => {
            validate_vm_name(&name)?;
            logs(socket, &name, follow, json)?;
        }
        VmCommand::Ssh { name, command } => {
            let info = ssh_info(socket, &name)?;
            let mut c = ssh_command(
                &info,
                !command.is_empty() || !std::io::stdin().is_terminal(),
            );
            c.args(&command);
            return Err(c.exec().into());
        }
        VmCommand::Cp { src, dest } => return super::cp::run(socket, &src, &dest),
        VmCommand::Exec {
            name,
            workdir,
            env,
            interactive,
            tty,
            command,
        } => {
            let opts =
                ExecOptions::new(workdir, &env, interactive, tty, |n| std::env::var(n).ok())?;
            let info = ssh_info(socket, &name)?;
            let mut c = ssh_command(&info, true);
            c.args(opts.ssh_flags());
            c.arg(opts.remote_command(&command));
            return Err(c.exec().into());
        }
    }
    Ok(0)
}

/// Creates and boots a VM as the caller: a non-root caller's own key is
/// authorized in the guest and its known_hosts refreshed.
pub fn create(socket: &Path, mut spec: VmSpec) -> anyhow::Result<VmInfo> {
    validate_vm_name(&spec.name)?;
    if !useraccess::is_root() {
        spec.authorized_keys = vec![useraccess::public_key()?];
    }
    let vm: VmInfo = rpc::call(socket, &Request::VmCreate { spec })?;
    if !useraccess::is_root() {
        useraccess::refresh_known_hosts(socket)?;
    }
    Ok(vm)
}

fn state_change(socket: &Path, name: &str, req: Request, verb: &str) -> anyhow::Result<()> {
    validate_vm_name(name)?;
    let vm: VmInfo = rpc::call(socket, &req)?;
    let state = vm.state.to_string();
    if verb == state {
        eprintln!("{} {verb}", vm.name);
    } else {
        eprintln!("{} {verb}; now {state}", vm.name);
    }
    Ok(())
}

fn prune(socket: &Path, force: bool) -> anyhow::Result<i32> {
    if !force {
        let names: Vec<String> = rpc::call(socket, &Request::VmPrune { dry_run: true })?;
        if names.is_empty() {
            eprintln!("nothing to prune: every VM is running");
            return Ok(0);
        }
        if !std::io::stdin().is_terminal() {
            anyhow::bail!(
                "would delete {}; pass -f to confirm when not on a terminal",
                names.join(", ")
            );
        }
        eprint!(
            "Delete {} VM(s) that are not running: {}? [y/N] ",
            names.len(),
            names.join(", ")
        );
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("nothing deleted");
            return Ok(1);
        }
    }
    let deleted: Vec<String> = rpc::call(socket, &Request::VmPrune { dry_run: false })?;
    if deleted.is_empty() {
        eprintln!("nothing to prune: every VM is running");
    }
    for name in deleted {
        println!("{name}");
    }
    Ok(0)
}

pub fn ssh_info(socket: &Path, name: &str) -> anyhow::Result<SshInfo> {
    validate_vm_name(name)?;
    let info = rpc::call(
        socket,
        &Request::VmSsh {
            name: name.to_string(),
        },
    )?;
    useraccess::local_ssh_info(socket, info)
}

pub fn ssh_command(info: &SshInfo, batch: bool) -> std::process::Command {
    let mut c = std::process::Command::new("ssh");
    c.args(info.client_args());
    if batch {
        c.args(["-o", "BatchMode=yes"]);
    }
    c.arg(format!("{}@{}", info.user, info.ip));
    c
}

/// Prints the serial console, read through the daemon (it is root's
/// file); `follow` keeps reading as it grows.
fn logs(socket: &Path, name: &str, follow: bool, json: bool) -> anyhow::Result<()> {
    use base64::Engine;
    let mut out = std::io::stdout().lock();
    let mut offset = 0u64;
    let mut said_anything = false;
    loop {
        let v: serde_json::Value = rpc::call(
            socket,
            &Request::VmLogRead {
                name: name.to_string(),
                offset,
            },
        )?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(v["data_base64"].as_str().unwrap_or_default())
            .map_err(|e| anyhow::anyhow!("bad console data from the daemon: {e}"))?;
        let next = v["next_offset"].as_u64().unwrap_or(offset);
        if json {
            // Something is printed even for an empty console.
            if !data.is_empty() || !said_anything {
                said_anything = true;
                let line = serde_json::json!({
                    "vm": name,
                    "offset": offset,
                    "next_offset": next,
                    "text": String::from_utf8_lossy(&data),
                });
                writeln!(out, "{line}")?;
            }
        } else {
            out.write_all(&data)?;
        }
        out.flush()?;
        let caught_up = next == offset || data.is_empty();
        offset = next;
        if caught_up {
            if !follow {
                if offset == 0 && !json {
                    eprintln!("no console output yet");
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}
