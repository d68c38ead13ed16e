//! `banger mcp` over stdio without a daemon or VMs: the handshake, every
//! tool listed with an object schema, and bad input answered as a one-line
//! tool error before anything reaches the daemon. (The official Python
//! SDK drives it against real VMs in the smoke suite.)

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

fn session(requests: &[Value]) -> Vec<Value> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_banger"))
        .args(["--socket", "/nonexistent/banger.sock", "mcp"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("banger mcp");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut answers = Vec::new();
    for r in requests {
        writeln!(stdin, "{r}").expect("write");
        stdin.flush().expect("flush");
        if r.get("id").is_some() {
            let line = lines.next().expect("an answer").expect("read");
            answers.push(serde_json::from_str(&line).expect("JSON-RPC"));
        }
    }
    drop(stdin);
    let status = child.wait().expect("exit");
    assert!(
        status.success(),
        "banger mcp ended {status} when stdin closed"
    );
    answers
}

fn call(id: u32, tool: &str, args: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": args}})
}

#[test]
fn tools_have_schemas_and_bad_input_is_a_one_line_tool_error() {
    let answers = session(&[
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "test", "version": "0"}}}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
        call(3, "vm_delete", json!({"name": "Not A Name"})),
        call(4, "vm_exec", json!({"name": "dev", "command": []})),
        call(
            5,
            "vm_exec",
            json!({"name": "dev", "command": ["true"], "env": {"1X": "y"}}),
        ),
        call(
            6,
            "vm_cp",
            json!({"name": "dev", "direction": "to_vm", "host_path": "rel", "vm_path": "/root"}),
        ),
        call(7, "vm_create", json!({"name": "dev", "mode": "sideways"})),
        call(8, "vm_list", json!({})),
        // A name with `=` is not a name (not NAME "A" with value "B=v").
        call(
            9,
            "vm_exec",
            json!({"name": "dev", "command": ["true"], "env": {"A=B": "v"}}),
        ),
    ]);
    assert_eq!(answers[0]["result"]["serverInfo"]["name"], "banger");
    let tools = answers[1]["result"]["tools"].as_array().expect("tools");
    let mut names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "vm_cp",
            "vm_create",
            "vm_delete",
            "vm_exec",
            "vm_list",
            "vm_stop",
            "workspace_export"
        ]
    );
    for t in tools {
        assert_eq!(t["inputSchema"]["type"], "object", "{t}");
        assert!(!t["description"].as_str().unwrap_or("").is_empty(), "{t}");
    }
    let create = tools
        .iter()
        .find(|t| t["name"] == "vm_create")
        .expect("vm_create");
    assert!(
        create["inputSchema"]["properties"]["repo"].is_object(),
        "{create}"
    );
    let said = |i: usize| -> String {
        let r = &answers[i]["result"];
        assert_eq!(r["isError"], true, "{r}");
        let text = r["content"][0]["text"].as_str().expect("text").to_string();
        assert!(!text.contains('\n'), "{text}");
        text
    };
    assert!(said(2).contains("invalid VM name"));
    assert!(said(3).contains("command is empty"));
    assert!(said(4).contains("not a variable name"));
    assert!(said(5).contains("not an absolute path"));
    assert!(said(6).contains("use overlay or full_copy"));
    assert!(said(7).contains("cannot reach the banger daemon"));
    assert!(said(8).contains("not a variable name"), "{}", said(8));
}
