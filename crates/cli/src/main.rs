//! `banger`: the command-line interface, and `banger daemon`.

mod commands;
mod mcp;
mod output;
mod progress;
mod rpc;
mod useraccess;

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

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
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// Print the version.
    Version {
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (e.g. `banger completions bash > /etc/bash_completion.d/banger`).
    Completions {
        #[arg(value_enum)]
        shell: commands::docs::Shell,
    },
    /// Serve the Model Context Protocol on stdio, for coding agents.
    Mcp,
    /// Print the man page, or write one page per verb into DIR.
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

fn main() {
    let cli = Cli::parse();
    // A closed pipe (`banger vm list | head`) ends a verb quietly, like any
    // CLI. The daemon and `banger mcp` live on and write into children's
    // stdin (a guest's ssh, a command that may not read it): for them a
    // closed pipe stays an error to handle (EPIPE), as Rust set it up.
    if !matches!(cli.command, Command::Daemon(_) | Command::Mcp) {
        // SAFETY: resetting SIGPIPE to its default before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let socket = cli.socket;
    let result = match cli.command {
        Command::Daemon(args) => commands::daemon::run(*args, &socket),
        Command::Vm(cmd) => commands::vm::run(cmd, &socket),
        Command::Image(cmd) => commands::image::run(cmd, &socket),
        Command::Workspace(cmd) => commands::workspace::run(cmd, &socket),
        Command::SshConfig(args) => commands::sshconfig::run(args, &socket),
        Command::Ops { json } => commands::ops(&socket, json),
        Command::Doctor { json } => commands::doctor::run(&socket, json),
        Command::Version { json } => {
            let version = env!("CARGO_PKG_VERSION");
            if json {
                println!("{}", serde_json::json!({ "version": version }));
            } else {
                println!("banger {version}");
            }
            Ok(0)
        }
        Command::Completions { shell } => {
            commands::docs::completions(Cli::command(), shell, &mut std::io::stdout());
            Ok(0)
        }
        Command::Mcp => mcp::run(&socket),
        Command::Man { dir: None } => {
            commands::docs::man_page(Cli::command(), &mut std::io::stdout()).map(|()| 0)
        }
        Command::Man { dir: Some(dir) } => {
            commands::docs::man_pages(Cli::command(), &dir).map(|n| {
                eprintln!("wrote {n} man pages to {}", dir.display());
                0
            })
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
