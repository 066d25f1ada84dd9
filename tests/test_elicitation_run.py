"""Tier 3: a call under `ask` is put to the client's user through MCP elicitation.

The official SDK client drives `mcpshield run` around the fake server, with no terminal approver
running: a client that declared elicitation is asked (approve runs the call once, decline refuses
it with the reason); one that did not is refused at once, as before.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from conftest import FAKE_SERVER, ROOT
from mcp.client import Client
from mcp.client.session import ClientRequestContext, ElicitationFnT
from mcp.client.stdio import StdioServerParameters, stdio_client

pytestmark = pytest.mark.anyio

#: Bound on one whole client session through the wrapper, start-up and shutdown included.
SESSION_TIMEOUT_S = 30.0

PROFILE = """
[tools]
allow = ["echo"]
ask = ["write_file"]

[approval]
timeout_s = 20
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def session(tmp_path: Path, elicitation_callback: ElicitationFnT | None) -> AsyncIterator[Client]:
    """An SDK client of `mcpshield run --profile PROFILE -- fake_server`, no approver running."""
    profile = tmp_path / "ask.toml"
    profile.write_text(PROFILE)
    approver_dir = tmp_path / "approver"
    approver_dir.mkdir(mode=0o700)
    argv = ["-m", "mcpshield", "run", "--profile", str(profile), "--", sys.executable, FAKE_SERVER]
    env = {
        "MCPSHIELD_APPROVER_DIR": str(approver_dir),
        "MCPSHIELD_CONFIG_DIR": str(tmp_path / "config"),
        "MCPSHIELD_LOG_DIR": str(tmp_path / "logs"),
    }
    params = StdioServerParameters(command=sys.executable, args=argv, cwd=ROOT, env=env)
    with (tmp_path / "stderr.txt").open("w") as stderr, anyio.fail_after(SESSION_TIMEOUT_S):
        async with Client(stdio_client(params, errlog=stderr), elicitation_callback=elicitation_callback) as client:
            yield client


def answering(action: str, decision: str | None, seen: list[types.ElicitRequestParams]) -> ElicitationFnT:
    """An elicitation callback: the client's user answers `action` (and `decision`)."""

    async def answer(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        seen.append(params)
        content = None if decision is None else {"decision": decision}
        return types.ElicitResult(action=action, content=content)  # type: ignore[arg-type]

    return answer


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, types.TextContent))


async def test_a_call_the_client_user_approves_runs_once(tmp_path: Path) -> None:
    seen: list[types.ElicitRequestParams] = []
    target = tmp_path / "out.txt"
    async with session(tmp_path, answering("accept", "approve", seen)) as client:
        result = await client.call_tool("write_file", {"path": str(target), "content": "approved"})
    assert not result.is_error, text_of(result)
    assert target.read_text() == "approved"
    (asked,) = seen
    assert isinstance(asked, types.ElicitRequestFormParams)
    assert "write_file" in asked.message and "fake_server.py" in asked.message and str(target) in asked.message
    assert asked.requested_schema["properties"]["decision"]["enum"] == ["approve", "deny"]
    (log,) = (tmp_path / "logs").glob("*/*.jsonl")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    (call,) = [e for e in events if e["event"] == "request" and e["method"] == "tools/call"]
    assert call["approval"]["channel"] == "elicitation" and call["approval"]["approver_uid"] is None
    assert call["approval"]["decision"] == "once"


async def test_a_call_the_client_user_declines_is_refused_with_the_reason(tmp_path: Path) -> None:
    seen: list[types.ElicitRequestParams] = []
    target = tmp_path / "out.txt"
    async with session(tmp_path, answering("decline", None, seen)) as client:
        result = await client.call_tool("write_file", {"path": str(target), "content": "declined"})
        echo = await client.call_tool("echo", {"text": "still here"})
    assert result.is_error
    assert "the user declined in the client" in text_of(result)
    assert text_of(echo) == "still here"
    assert not target.exists() and len(seen) == 1


async def test_long_arguments_are_cut_in_the_question_with_a_note(tmp_path: Path) -> None:
    seen: list[types.ElicitRequestParams] = []
    async with session(tmp_path, answering("accept", "deny", seen)) as client:
        result = await client.call_tool("write_file", {"path": str(tmp_path / "big"), "content": "x" * 10_000})
    assert "the user declined in the client" in text_of(result)
    (asked,) = seen
    assert "[cut: 2000 of " in asked.message and "x" * 3000 not in asked.message


async def test_a_client_without_elicitation_is_refused_at_once_naming_the_approver(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    async with session(tmp_path, None) as client:
        with anyio.fail_after(5):
            result = await client.call_tool("write_file", {"path": str(target), "content": "never"})
    assert result.is_error
    assert "no approver is available" in text_of(result) and "`mcpshield approvals`" in text_of(result)
    assert not target.exists()
