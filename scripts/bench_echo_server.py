"""The benchmark's stdio MCP server: one `echo` tool, built to cost as little per message as possible.

Reads big chunks from fd 0, answers every complete line of a chunk, and writes all the answers of
one read with a single os.write, so the server is never what the benchmark measures.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import orjson

JSON = dict[str, Any]

# Larger than a pipe's default capacity (64 KiB), so one read drains whatever is waiting.
READ_CHUNK = 1 << 20
STDIN_FD = 0
STDOUT_FD = 1
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602

ECHO_TOOL: JSON = {
    "name": "echo",
    "description": "Return the text.",
    "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
}


def initialize_result(params: JSON) -> JSON:
    return {
        "protocolVersion": params.get("protocolVersion", "2025-11-25"),
        "capabilities": {"tools": {}},
        "serverInfo": {"name": "bench-echo-server", "version": "0.1.0"},
    }


def call_tool(params: JSON) -> JSON:
    """Return the echo result, or raise KeyError/TypeError for anything but a well-formed echo call."""
    if params["name"] != "echo":
        raise KeyError(params["name"])
    text = params["arguments"]["text"]
    if not isinstance(text, str):
        raise TypeError("text must be a string")
    return {"content": [{"type": "text", "text": text}]}


def answer(method: str, params: JSON) -> JSON:
    """The response body (result or error member) for one request."""
    if method == "tools/call":
        try:
            return {"result": call_tool(params)}
        except (KeyError, TypeError) as exc:
            return {"error": {"code": INVALID_PARAMS, "message": f"bad echo call: {exc}"}}
    if method == "initialize":
        return {"result": initialize_result(params)}
    if method == "tools/list":
        return {"result": {"tools": [ECHO_TOOL]}}
    if method == "ping":
        return {"result": {}}
    # server/discover lands here on purpose: clients then fall back to initialize.
    return {"error": {"code": METHOD_NOT_FOUND, "message": f"method not found: {method}"}}


def handle_line(line: bytes) -> bytes | None:
    """The encoded response line for a request; None for notifications, responses and blank lines."""
    if not line.strip():
        return None
    message = orjson.loads(line)
    if not isinstance(message, dict) or "id" not in message or "method" not in message:
        return None
    response = {"jsonrpc": "2.0", "id": message["id"]}
    response.update(answer(message["method"], message.get("params") or {}))
    return orjson.dumps(response) + b"\n"


def write_all(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(STDOUT_FD, view) :]


def serve() -> None:
    # Pieces of a line longer than one read; joined once, when its newline arrives.
    partial: list[bytes] = []
    while chunk := os.read(STDIN_FD, READ_CHUNK):
        lines = chunk.split(b"\n")
        if len(lines) == 1:
            partial.append(chunk)
            continue
        if partial:
            partial.append(lines[0])
            lines[0] = b"".join(partial)
            partial = []
        tail = lines.pop()
        if tail:
            partial.append(tail)
        replies = [reply for line in lines if (reply := handle_line(line)) is not None]
        if replies:
            write_all(b"".join(replies))


def main() -> int:
    try:
        serve()
    except BrokenPipeError:
        # The client went away mid-write: nothing left to answer.
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
