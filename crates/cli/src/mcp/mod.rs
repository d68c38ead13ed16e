//! `banger mcp`: a Model Context Protocol server on stdio (the `rmcp`
//! SDK), so a coding agent can create, use and delete sandboxes with tool
//! calls. Each tool has a JSON schema (from its parameter type), runs the
//! same code as the matching CLI verb, and answers a JSON object or a
//! one-line error (a tool error the agent sees, never a protocol error).
//! It talks to the daemon's socket as the user who runs it, so an agent
//! gets exactly that user's VMs and rights.

mod tools;

use std::path::{Path, PathBuf};

use anyhow::Context;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{tool, tool_handler, tool_router, ServerHandler, ServiceExt};
use serde_json::Value;

use tools::{CpParams, CreateParams, DeleteParams, ExecParams, ExportParams, NameParams};

const INSTRUCTIONS: &str =
    "banger runs disposable Linux microVMs (Debian, root inside) as sandboxes. \
Typical use: vm_create with repo (your project appears at /root/repo in the guest), vm_exec to \
build and test there, workspace_export to get your changes back as a patch, vm_delete when done. \
VM names are DNS labels (a-z, 0-9, '-').";

/// The server: the daemon's socket, and the tools.
#[derive(Clone)]
pub struct Banger {
    socket: PathBuf,
    #[allow(dead_code)] // read by the code `tool_handler` generates
    tool_router: ToolRouter<Self>,
}

/// Runs a blocking tool off the async workers; its answer or its error
/// (on one line) as the tool's result.
async fn answer(work: impl FnOnce() -> anyhow::Result<Value> + Send + 'static) -> CallToolResult {
    let result = tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("the tool failed: {e}")));
    match result {
        Ok(v) => CallToolResult::structured(v),
        Err(e) => CallToolResult::error(vec![ContentBlock::text(format!(
            "banger: {}",
            crate::output::one_line(&e)
        ))]),
    }
}

#[tool_router]
impl Banger {
    pub fn new(socket: PathBuf) -> Self {
        Banger {
            socket,
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "Create a VM and boot it (returns when SSH answers; about 20-60 s). With repo, the git repo at that host path is put at /root/repo in the guest, history included; if that fails the VM is deleted again."
    )]
    async fn vm_create(&self, Parameters(p): Parameters<CreateParams>) -> CallToolResult {
        let s = self.socket.clone();
        answer(move || tools::create(&s, p)).await
    }

    #[tool(description = "List your VMs: name, state, IP, resources, image, workspace.")]
    async fn vm_list(&self) -> CallToolResult {
        let s = self.socket.clone();
        answer(move || tools::list(&s)).await
    }

    #[tool(
        description = "Run a command in a running VM as root (argv, no shell unless you run one); answers exit_code, stdout and stderr (each cut at 1 MiB)."
    )]
    async fn vm_exec(&self, Parameters(p): Parameters<ExecParams>) -> CallToolResult {
        let s = self.socket.clone();
        answer(move || tools::exec(&s, p)).await
    }

    #[tool(
        description = "Copy a file or directory between the host and a running VM (as `docker cp`): modes and symlinks kept; into an existing directory the copy goes inside it."
    )]
    async fn vm_cp(&self, Parameters(p): Parameters<CpParams>) -> CallToolResult {
        let s = self.socket.clone();
        answer(move || tools::cp(&s, p)).await
    }

    #[tool(
        description = "The guest's work under /root/repo as a binary-safe patch that `git apply` accepts (untracked files included); with base_commit, guest commits too."
    )]
    async fn workspace_export(&self, Parameters(p): Parameters<ExportParams>) -> CallToolResult {
        let s = self.socket.clone();
        answer(move || tools::export(&s, p)).await
    }

    #[tool(description = "Shut a VM down gracefully; its disk is kept.")]
    async fn vm_stop(&self, Parameters(p): Parameters<NameParams>) -> CallToolResult {
        let s = self.socket.clone();
        answer(move || tools::stop(&s, p)).await
    }

    #[tool(
        description = "Delete a VM and everything it owns (disk, network, keys); force stops a running one first."
    )]
    async fn vm_delete(&self, Parameters(p): Parameters<DeleteParams>) -> CallToolResult {
        let s = self.socket.clone();
        answer(move || tools::delete(&s, p)).await
    }
}

#[tool_handler]
impl ServerHandler for Banger {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("banger", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}

/// Serves MCP on stdin/stdout until the client closes stdin.
pub fn run(socket: &Path) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the MCP server's runtime")?;
    rt.block_on(async {
        let server = Banger::new(socket.to_path_buf());
        let service = server
            .serve(rmcp::transport::stdio())
            .await
            .context("starting MCP on stdio (is a client connected?)")?;
        service.waiting().await.context("serving MCP")?;
        Ok(0)
    })
}
