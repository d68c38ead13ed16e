"""Drives `banger mcp` with the official MCP Python SDK's client, as a coding
agent would: list the tools, create a VM with a repo, run a command in it,
export the work as a patch, delete it. Prints one JSON line of what it saw;
exits non-zero, saying why, when an answer is not what a user expects.

Usage: python mcp_client.py BANGER SOCKET VM REPO   (VM "-" only lists the
tools and checks that bad input is refused.)
"""

import asyncio
import json
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

TOOLS = {"vm_create", "vm_list", "vm_exec", "vm_cp", "workspace_export", "vm_stop", "vm_delete"}


def fail(why):
    print(f"mcp client: {why}", file=sys.stderr)
    sys.exit(1)


def text(result):
    return " ".join(c.text for c in result.content if getattr(c, "type", "") == "text")


async def call(session, name, args, expect_error=False):
    result = await session.call_tool(name, args, read_timeout_seconds=600)
    if bool(result.is_error) != expect_error:
        fail(f"{name} {args}: is_error={result.is_error}: {text(result)}")
    if expect_error:
        return text(result)
    if result.structured_content is None:
        fail(f"{name}: no structured answer: {text(result)}")
    return result.structured_content


async def main(banger, socket, vm, repo):
    params = StdioServerParameters(command=banger, args=["--socket", socket, "mcp"])
    seen = {}
    async with stdio_client(params) as streams:
        read, write = streams[0], streams[1]
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            seen["server"] = init.server_info.name
            listed = await session.list_tools()
            names = {t.name for t in listed.tools}
            if not TOOLS <= names:
                fail(f"tools missing: {sorted(TOOLS - names)}")
            for t in listed.tools:
                if t.input_schema.get("type") != "object":
                    fail(f"{t.name} has no object schema: {t.input_schema}")
            seen["tools"] = sorted(names)
            # The CLI's validation, as a tool error the agent can read.
            bad = await call(session, "vm_delete", {"name": "Not_A_Name"}, expect_error=True)
            if "invalid VM name" not in bad:
                fail(f"a bad name got: {bad}")
            seen["bad_name"] = bad
            if vm == "-":
                print(json.dumps(seen))
                return
            created = await call(session, "vm_create", {"name": vm, "repo": repo})
            if created["vm"]["state"] != "running" or "workspace" not in created:
                fail(f"vm_create answered {created}")
            listed = await call(session, "vm_list", {})
            if vm not in [v["name"] for v in listed["vms"]]:
                fail(f"vm_list lacks {vm}: {listed}")
            ran = await call(session, "vm_exec", {
                "name": vm,
                "command": ["sh", "-c", "echo \"$GREETING\" >> README && cat README && exit 3"],
                "workdir": "/root/repo",
                "env": {"GREETING": "hello from an agent"},
            })
            if ran["exit_code"] != 3 or "hello from an agent" not in ran["stdout"]:
                fail(f"vm_exec answered {ran}")
            fed = await call(session, "vm_exec", {"name": vm, "command": ["wc", "-c"], "stdin": "12345"})
            if fed["stdout"].strip() != "5":
                fail(f"vm_exec with stdin answered {fed}")
            patch = await call(session, "workspace_export", {"name": vm})
            if "+hello from an agent" not in patch["patch"]:
                fail(f"the patch lacks the edit: {patch}")
            missing = await call(session, "vm_exec", {"name": "smoke-nope", "command": ["true"]}, expect_error=True)
            if "no VM named" not in missing:
                fail(f"an unknown VM got: {missing}")
            deleted = await call(session, "vm_delete", {"name": vm, "force": True})
            listed = await call(session, "vm_list", {})
            if vm in [v["name"] for v in listed["vms"]]:
                fail(f"{vm} is still listed after vm_delete: {deleted}")
            seen.update(exit_code=ran["exit_code"], patch_bytes=patch["bytes"], deleted=deleted["deleted"])
    print(json.dumps(seen))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
