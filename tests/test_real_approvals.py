"""Tier 3: a real server's call under `ask`, approved or denied by a person at a real approver.

server-everything runs through ``mcpshield run`` with a profile that asks about `echo`; the
official SDK client calls it; `mcpshield approvals --json` (driven through its scriptable mode)
decides. The call returns only once decided, with the server's answer or the refusal.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from approvers import running_approver
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from realservers import REPO_ROOT, everything

pytestmark = [pytest.mark.real, pytest.mark.anyio]

#: Bound on one whole client session through the wrapper, start-up and shutdown included.
SESSION_TIMEOUT_S = 45.0

PROFILE = """
[tools]
default = "deny"
ask = ["echo"]
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _params(tmp_path: Path, approver_dir: Path) -> StdioServerParameters:
    profile = tmp_path / "ask-echo.toml"
    profile.write_text(PROFILE)
    argv = [sys.executable, "-m", "mcpshield", "run", "--profile", str(profile), "--", *everything().argv]
    env = {"MCPSHIELD_APPROVER_DIR": str(approver_dir), "MCPSHIELD_LOG_DIR": str(tmp_path / "logs")}
    return StdioServerParameters(command=argv[0], args=argv[1:], cwd=REPO_ROOT, env=env)


def _text(result: types.CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, types.TextContent))


@pytest.mark.parametrize(("decision", "runs"), [("once", True), ("deny", False)])
async def test_a_person_decides_a_real_servers_call(tmp_path: Path, decision: str, runs: bool) -> None:
    approver_dir = tmp_path / "approver"
    approver_dir.mkdir(mode=0o700)
    async with running_approver(approver_dir) as approver:
        with (tmp_path / "stderr.log").open("w") as errlog, anyio.fail_after(SESSION_TIMEOUT_S):
            results: list[types.CallToolResult] = []
            async with (
                Client(stdio_client(_params(tmp_path, approver_dir), errlog=errlog)) as client,
                anyio.create_task_group() as tg,
            ):

                async def call() -> None:
                    results.append(await client.call_tool("echo", {"message": "approved?"}))

                tg.start_soon(call)
                pending = await approver.line()
                assert (pending["tool"], pending["arguments"], pending["rule"]) == (
                    "echo",
                    {"message": "approved?"},
                    "tools.ask",
                )
                assert "everything" in pending["server"]
                assert not results  # the call waits for the person
                await approver.decide(pending["id"], decision, "not now" if decision == "deny" else None)
        (result,) = results
        if runs:
            assert not result.is_error
            assert "approved?" in _text(result)
        else:
            assert result.is_error
            assert _text(result).endswith("the user denied echo in `mcpshield approvals`: not now")
        assert await approver.line() == {"id": pending["id"], "resolved": decision}
