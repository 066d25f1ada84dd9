"""A small MCP server for `mcpshield demo`: stdlib only, one message per line on stdio.

Tools: `echo` (returns its text), `add` (adds two numbers), `whoami` (the environment
variables the server was given), `noisy` (prints a stray non-JSON line on stdout first,
as careless servers do) and `shell` (pretends to run a command: what a profile should hide).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

_TOOLS = [
    {
        "name": "echo",
        "description": "Returns its text.",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    },
    {
        "name": "add",
        "description": "Adds two numbers.",
        "inputSchema": {
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        },
    },
    {
        "name": "whoami",
        "description": "Lists the names of the environment variables the server was started with.",
        "inputSchema": {"type": "object", "properties": {}},
    },
    {
        "name": "noisy",
        "description": "Prints a stray debug line on stdout, then answers.",
        "inputSchema": {"type": "object", "properties": {}},
    },
    {
        "name": "shell",
        "description": "Runs a shell command (the demo only pretends to).",
        "inputSchema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
    },
]


def _send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _text(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}]}


def _call(name: str, args: dict[str, Any]) -> dict[str, Any]:
    if name == "echo":
        return _text(str(args.get("text", "")))
    if name == "add":
        return _text(str(args.get("a", 0) + args.get("b", 0)))
    if name == "whoami":
        return _text(", ".join(sorted(os.environ)))
    if name == "noisy":
        sys.stdout.write("DEBUG: noisy tool called\n")
        return _text("done (and printed a stray line on stdout)")
    if name == "shell":
        return _text(f"would have run: {args.get('command')}")
    return {"content": [{"type": "text", "text": f"no tool {name}"}], "isError": True}


def _answer(method: str, params: dict[str, Any]) -> dict[str, Any] | None:
    if method == "initialize":
        return {
            "protocolVersion": params.get("protocolVersion", "2025-11-25"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "mcpshield-demo", "version": "1.0"},
        }
    if method == "ping":
        return {}
    if method == "tools/list":
        return {"tools": _TOOLS}
    if method == "tools/call":
        return _call(str(params.get("name")), params.get("arguments") or {})
    return None


def main() -> None:
    sys.stderr.write("demo server: ready\n")
    for line in sys.stdin:
        msg = json.loads(line)
        if "id" not in msg or "method" not in msg:
            continue
        result = _answer(msg["method"], msg.get("params") or {})
        if result is None:
            _send({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32601, "message": "Method not found"}})
        else:
            _send({"jsonrpc": "2.0", "id": msg["id"], "result": result})


if __name__ == "__main__":
    main()
