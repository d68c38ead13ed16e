//! `banger`: the command-line interface, and `banger daemon`.

mod commands;
mod output;
mod progress;
mod rpc;
mod useraccess;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "banger",
    version,
    about = "Disposable Linux microVMs as sandboxes for developers and coding agents"
)]
struct Cli {
    /// The daemon's socket.
    #[arg(long, global = true, env = "BANGER_SOCKET", default_value = banger_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground.
    Daemon(Box<commands::daemon::DaemonArgs>),
    /// Create and manage VMs.
    #[command(subcommand)]
    Vm(commands::vm::VmCommand),
    /// Put a git repo into a VM, and get the work back as a patch.
    #[command(subcommand)]
    Workspace(commands::workspace::WorkspaceCommand),
    /// Build and manage guest images.
    #[command(subcommand)]
    Image(commands::image::ImageCommand),
    /// Print banger's SSH config, or install it into ~/.ssh/config.
    SshConfig(commands::sshconfig::SshConfigArgs),
    /// List recent operations.
    Ops {
        #[arg(long)]
        json: bool,
    },
    /// Check what this host lacks to run banger, and how to fix it.
    Doctor,
    /// Print the version.
    Version,
}

fn main() {
    // A closed pipe (`banger vm list | head`) ends us quietly, like any CLI.
    // SAFETY: resetting SIGPIPE to its default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let socket = cli.socket;
    let result = match cli.command {
        Command::Daemon(args) => commands::daemon::run(*args, &socket),
        Command::Vm(cmd) => commands::vm::run(cmd, &socket),
        Command::Image(cmd) => commands::image::run(cmd, &socket),
        Command::Workspace(cmd) => commands::workspace::run(cmd, &socket),
        Command::SshConfig(args) => commands::sshconfig::run(args, &socket),
        Command::Ops { json } => commands::ops(&socket, json),
        Command::Doctor => commands::doctor::run(&socket),
        Command::Version => {
            println!("banger {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("banger: {}", output::one_line(&e));
            std::process::exit(1);
        }
    }
}
