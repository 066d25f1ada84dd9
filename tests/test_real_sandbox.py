"""Tier 3: real servers nobody here wrote, started through npx and from PyPI, run and work inside
the sandbox; what they attempt outside its bounds fails at the OS level even where the profile's
policy lets the call through (the profiles below allow every tool on every path)."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import mcp_types as types
import psutil
import pytest
from conftest import sandbox_unavailable
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from realservers import NPM_BIN, NPM_PREFIX, REPO_ROOT, ServerCommand, git_server, make_git_repo
from sandboxing import root as as_root
from sandboxing import workdir

from mcpshield.sandbox import landlock

pytestmark = [pytest.mark.real, pytest.mark.anyio]

#: Bound on one whole client session through the wrapper, npx's start-up included.
SESSION_TIMEOUT_S = 60.0
BACKENDS = ("bubblewrap", "landlock")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def require(backend: str) -> None:
    if backend == "landlock" and landlock.abi_version() < 4:
        sandbox_unavailable(f"Landlock ABI {landlock.abi_version()} is below 4")
    if backend == "bubblewrap" and not os.path.exists("/usr/bin/bwrap"):
        sandbox_unavailable("bubblewrap is not installed")


def profile(tmp_path: Path, sandbox: str) -> Path:
    path = tmp_path / "profile.toml"
    path.write_text(f'[tools]\ndefault = "allow"\nstrict_args = false\n\n[sandbox]\n{sandbox}\n')
    return path


@asynccontextmanager
async def sandboxed(server: ServerCommand, profile: Path, tmp_path: Path) -> AsyncIterator[Client]:
    """An SDK client session with `server` behind `mcpshield run --profile`; afterwards no
    process of the wrapper's tree is left."""
    argv = [sys.executable, "-m", "mcpshield", "run", "--profile", str(profile), "--", *server.argv]
    env = {"MCPSHIELD_CONFIG_DIR": str(tmp_path / "config"), "PATH": os.environ["PATH"]}
    params = StdioServerParameters(command=argv[0], args=argv[1:], cwd=REPO_ROOT, env=env)
    before = {child.pid for child in psutil.Process().children()}
    tree: list[psutil.Process] = []
    with (tmp_path / "stderr.log").open("w") as errlog, anyio.fail_after(SESSION_TIMEOUT_S):
        async with Client(stdio_client(params, errlog=errlog)) as client:
            for child in psutil.Process().children():
                if child.pid not in before:
                    tree += [child, *child.children(recursive=True)]
            yield client
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, f"left behind: {alive}"


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, types.TextContent))


def filesystem_via_npx(root: Path) -> ServerCommand:
    assert (NPM_BIN / "mcp-server-filesystem").exists(), "run scripts/test, which installs the real servers"
    npx = "/usr/bin/npx" if os.path.exists("/usr/bin/npx") else "npx"
    argv = (npx, "--no-install", "--prefix", str(NPM_PREFIX), "mcp-server-filesystem", str(root))
    return ServerCommand("filesystem-via-npx", argv)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_server_filesystem_through_npx_writes_only_where_the_sandbox_lets_it(
    backend: str, tmp_path: Path
) -> None:
    require(backend)
    with workdir(as_root()) as work:  # not under /tmp, which bubblewrap makes private
        await _filesystem_session(backend, work / "root", tmp_path)


async def _filesystem_session(backend: str, root: Path, tmp_path: Path) -> None:
    (root / "open").mkdir(parents=True)
    (root / "locked").mkdir()
    (root / "locked" / "readme.txt").write_text("readable, not writable")
    (root / "private").mkdir()
    (root / "private" / "key.txt").write_text("tier3-sandbox-canary")
    sandbox = f'backend = "{backend}"\nwrite = ["{root}/open"]\ndeny = ["{root}/private"]'
    async with sandboxed(filesystem_via_npx(root), profile(tmp_path, sandbox), tmp_path) as client:
        wrote = await client.call_tool("write_file", {"path": str(root / "open" / "a.txt"), "content": "in"})
        assert not wrote.is_error, text_of(wrote)
        refused = await client.call_tool("write_file", {"path": str(root / "locked" / "b.txt"), "content": "out"})
        read = await client.call_tool("read_text_file", {"path": str(root / "locked" / "readme.txt")})
        secret = await client.call_tool("read_text_file", {"path": str(root / "private" / "key.txt")})
    assert (root / "open" / "a.txt").read_text() == "in"
    assert refused.is_error and not (root / "locked" / "b.txt").exists()
    assert text_of(read) == "readable, not writable"
    assert secret.is_error and "tier3-sandbox-canary" not in text_of(secret)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_mcp_server_git_reads_a_repository_it_cannot_change(backend: str, tmp_path: Path) -> None:
    require(backend)
    with workdir(as_root()) as work:
        repo = make_git_repo(work / "repo")
        sandbox = f'backend = "{backend}"'
        async with sandboxed(git_server(repo), profile(tmp_path, sandbox), tmp_path) as client:
            status = await client.call_tool("git_status", {"repo_path": str(repo)})
            branch = await client.call_tool("git_create_branch", {"repo_path": str(repo), "branch_name": "planted"})
        assert not status.is_error and "main" in text_of(status), text_of(status)
        assert branch.is_error, text_of(branch)
        assert not (repo / ".git" / "refs" / "heads" / "planted").exists()
