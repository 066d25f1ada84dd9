"""Tier 3: a secret from the keyring reaches a real server's environment and never comes back.

server-everything's `get-env` tool returns the server's whole environment. Through
``mcpshield run`` with a profile whose [env] takes a token from the keyring (the test backend,
registered with PYTHON_KEYRING_BACKEND, stored with ``mcpshield secret set`` as a user would),
the token is in the server's environment, its value comes back as ``[REDACTED:NAME]``, and a
variable of mcpshield's own environment that the profile does not name is not passed on.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from file_keyring import subprocess_env
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from realservers import REPO_ROOT, everything

pytestmark = [pytest.mark.real, pytest.mark.anyio]

#: Bound on one whole client session through the wrapper, start-up and shutdown included.
SESSION_TIMEOUT_S = 30.0
#: Bound on one `mcpshield secret set` or a `run` that refuses to start.
COMMAND_TIMEOUT_S = 30.0

PROFILE = """
[server]
name = "everything-env"

[tools]
default = "deny"
allow = ["get-env"]

[env]
SERVICE_TOKEN = "keyring:service-token"
FROM_CI = "env:CI_ONLY_VALUE"
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    return subprocess_env(tmp_path, **extra)


def _set_secret(tmp_path: Path, name: str, value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mcpshield", "secret", "set", name],
        input=value + "\n",
        capture_output=True,
        text=True,
        env=_environment(tmp_path),
        cwd=REPO_ROOT,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _params(tmp_path: Path, profile: Path, **extra: str) -> StdioServerParameters:
    argv = [sys.executable, "-m", "mcpshield", "run", "--profile", str(profile), "--", *everything().argv]
    return StdioServerParameters(command=argv[0], args=argv[1:], cwd=REPO_ROOT, env=_environment(tmp_path, **extra))


async def test_a_keyring_secret_reaches_the_server_and_comes_back_redacted(tmp_path: Path) -> None:
    token = "tok-" + secrets.token_hex(16)
    ci_value = "ci-" + secrets.token_hex(8)
    parent_only = "parent-" + secrets.token_hex(8)
    _set_secret(tmp_path, "service-token", token)
    profile = tmp_path / "everything-env.toml"
    profile.write_text(PROFILE)
    params = _params(tmp_path, profile, CI_ONLY_VALUE=ci_value, PARENT_ONLY=parent_only)
    errlog = tmp_path / "stderr.log"
    with errlog.open("w") as stderr, anyio.fail_after(SESSION_TIMEOUT_S):
        async with Client(stdio_client(params, errlog=stderr)) as client:
            result = await client.call_tool("get-env", {})
    assert not result.is_error
    (block,) = result.content
    assert isinstance(block, types.TextContent)
    server_env = json.loads(block.text)
    # The value was injected (the server saw it: it came back, and was replaced on the way).
    assert server_env["SERVICE_TOKEN"] == "[REDACTED:service-token]"  # noqa: S105  a label
    assert server_env["FROM_CI"] == "[REDACTED:FROM_CI]"
    assert token not in block.text and ci_value not in block.text
    # mcpshield's own environment stays its own: neither the variable the profile took a value
    # from nor one it does not name reaches the server.
    assert "PARENT_ONLY" not in server_env and "CI_ONLY_VALUE" not in server_env
    assert parent_only not in block.text
    logged = errlog.read_text()
    assert "enforcing profile everything-env" in logged
    assert token not in logged


def test_a_missing_secret_stops_the_launch_and_names_the_fix(tmp_path: Path) -> None:
    profile = tmp_path / "everything-env.toml"
    profile.write_text(PROFILE)
    params = _params(tmp_path, profile, CI_ONLY_VALUE="ci-value-123")
    done = subprocess.run(
        [params.command, *params.args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=params.env,
        cwd=REPO_ROOT,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 3
    first, tip = done.stderr.strip().splitlines()
    assert "'service-token'" in first and "not in the keyring" in first
    assert "mcpshield secret set service-token" in tip
    assert "enforcing profile" not in done.stderr  # nothing was started
