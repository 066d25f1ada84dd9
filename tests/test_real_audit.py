"""Tier 3: the audit log of a real server's session, driven by the official SDK client.

server-everything runs through ``mcpshield run`` under its shipped profile (which allows `echo`
and hides `get-env`); afterwards the session's file holds who connected and one line per
request with what was decided, and `mcpshield audit verify` accepts it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from realservers import REPO_ROOT, everything

pytestmark = [pytest.mark.real, pytest.mark.anyio]

#: Bound on one whole client session through the wrapper, start-up and shutdown included.
SESSION_TIMEOUT_S = 30.0
#: Bound on `mcpshield audit verify`.
VERIFY_TIMEOUT_S = 30


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_real_session_leaves_a_verifiable_log_of_each_request(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    argv = [sys.executable, "-m", "mcpshield", "run", "--profile", "everything", "--", *everything().argv]
    env = {"MCPSHIELD_LOG_DIR": str(logs), "MCPSHIELD_CONFIG_DIR": str(tmp_path / "config")}
    params = StdioServerParameters(command=argv[0], args=argv[1:], cwd=REPO_ROOT, env=env)
    with (tmp_path / "stderr.log").open("w") as errlog, anyio.fail_after(SESSION_TIMEOUT_S):
        async with Client(stdio_client(params, errlog=errlog)) as client:
            echoed = await client.call_tool("echo", {"message": "audited"})
            assert not echoed.is_error
            with pytest.raises(MCPError, match="Unknown tool"):
                await client.call_tool("get-env", {})

    (path,) = logs.glob("*/*.jsonl")
    with anyio.fail_after(VERIFY_TIMEOUT_S):
        done = await anyio.run_process(
            [sys.executable, "-m", "mcpshield", "audit", "verify", str(path)], check=False, cwd=REPO_ROOT
        )
    shown = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0 and "ok" in shown, shown
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert events[0]["profile"]["name"] == "everything"
    (init,) = [e for e in events if e["event"] == "initialize"]
    assert init["client"]["name"] and init["server"]["name"]
    assert init["negotiated"]
    calls = {e["tool"]: e for e in events if e["event"] == "request" and e["method"] == "tools/call"}
    assert (calls["echo"]["decision"], calls["echo"]["outcome"]) == ("allow", "answered")
    assert (calls["get-env"]["decision"], calls["get-env"]["rule"]) == ("deny", "tools.hidden")
    assert calls["get-env"]["outcome"] == "refused"
    assert events[-1]["event"] == "session_end"
