"""Tier 3: profiles enforced by ``mcpshield run`` on real MCP servers nobody here wrote.

The official SDK client drives each server through the wrapper with a profile: tools the profile
hides are gone from the listing and unknown when called; calls a rule, a schema or a missing
approver refuses come back as tool errors that say why; the server never sees a refused call.
"""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import psutil
import pytest
from mcp.client import Client
from mcp.client.session import ClientRequestContext, SamplingFnT
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from realservers import (
    REPO_ROOT,
    ServerCommand,
    describe,
    direct,
    everything,
    filesystem,
    git_server,
    kill_all,
    make_git_repo,
    survivors_after,
    time_server,
    tree,
)

pytestmark = [pytest.mark.real, pytest.mark.anyio]

SESSION_TIMEOUT = 30.0
"""Bound on one whole client session through the wrapper, start-up and shutdown included."""

CANARY = "tier3-canary-3f9c1d"
"""What the secret files hold; it must never appear in anything the client gets back."""

JSON = dict[str, Any]

INVALID_PARAMS = -32602
"""The code of mcpshield's answer to a hidden tool or prompt ("Unknown tool: NAME")."""

RESOURCE_NOT_FOUND = -32002
"""The code of its answer to a denied resource, as for a missing one."""

DOCUMENTS = "demo://resource/static/document"
"""Where server-everything keeps its static resources."""

DYNAMIC_TEXT = types.ResourceTemplateReference(type="ref/resource", uri="demo://resource/dynamic/text/{resourceId}")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- the wrapper, a profile and a session -------------------------------------------------------


def shield(
    server: ServerCommand, profile: Path | None, config_dir: Path, home: Path | None = None
) -> StdioServerParameters:
    """``mcpshield run`` around the server, enforcing ``profile`` (or, with None, the profile whose
    match fits the command). The user config dir is ``config_dir``, so no profile of the machine's
    user takes part."""
    flags = [] if profile is None else ["--profile", str(profile)]
    argv = [sys.executable, "-m", "mcpshield", "run", *flags, "--", *server.argv]
    env = {"MCPSHIELD_CONFIG_DIR": str(config_dir)}
    if home is not None:
        env["HOME"] = str(home)
    return StdioServerParameters(command=argv[0], args=argv[1:], cwd=REPO_ROOT, env=env)


def write_profile(tmp_path: Path, text: str, **paths: Path) -> Path:
    """The profile ``text`` with each ``{name}`` replaced by that path as a TOML string."""
    profile = tmp_path / "profile.toml"
    profile.write_text(text.format(**{name: json.dumps(str(path)) for name, path in paths.items()}))
    return profile


@asynccontextmanager
async def session(
    params: StdioServerParameters, errlog: Path, sampling_callback: SamplingFnT | None = None
) -> AsyncIterator[Client]:
    """An SDK client session, the wrapper's stderr going to ``errlog``; once it ends, every process
    the wrapper's tree held must be gone."""
    before = {child.pid for child in psutil.Process().children()}
    recorded: list[psutil.Process] = []
    try:
        with errlog.open("w") as stderr, anyio.fail_after(SESSION_TIMEOUT):
            async with Client(stdio_client(params, errlog=stderr), sampling_callback=sampling_callback) as client:
                new = [child.pid for child in psutil.Process().children() if child.pid not in before]
                recorded = [process for pid in new for process in tree(pid)]
                yield client
        assert recorded, "found no wrapper process under the test"
        survivors = await survivors_after(recorded)
        assert not survivors, f"left behind: {describe(survivors)}"
    finally:
        kill_all(recorded)


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, types.TextContent))


def refusal(result: types.CallToolResult) -> str:
    """The text of a tool-level refusal, which must be an error result."""
    assert result.is_error, f"expected a refusal, got {text_of(result)!r}"
    return text_of(result)


async def tool_names(client: Client) -> set[str]:
    return {tool.name for tool in (await client.list_tools()).tools}


# -- server-filesystem with a profile that keeps it inside public/ ------------------------------

FILESYSTEM_PROFILE = """
[server]
name = "public-only"

[tools]
default = "deny"
ask = ["write_file"]
deny = ["move_file"]

[[rules]]
tool = ["read_text_file", "read_file", "list_directory", "get_file_info"]
action = "allow"
[rules.args.path]
within = [{public}]

[[rules]]
tool = "read_multiple_files"
action = "allow"
[rules.args.paths]
within = [{public}]
"""

VISIBLE_FILESYSTEM_TOOLS = {
    "read_text_file",
    "read_file",
    "list_directory",
    "get_file_info",
    "read_multiple_files",
    "write_file",
}


def secret_tree(tmp_path: Path) -> tuple[Path, Path]:
    """public/ and secret/, each a directory the server is started with; public/ holds a file, a
    symlink to the secret key and a symlink to the secret directory."""
    public, secret = tmp_path / "public", tmp_path / "secret"
    public.mkdir()
    secret.mkdir()
    (secret / "key").write_text(CANARY)
    (public / "readme.txt").write_text("nothing to see here\n")
    (public / "link").symlink_to(Path("..") / "secret" / "key")
    (public / "dirlink").symlink_to(Path("..") / "secret")
    return public, secret


def both_directories(public: Path, secret: Path) -> ServerCommand:
    """server-filesystem allowed into both directories: on its own it serves the secret too."""
    return ServerCommand("filesystem", (*filesystem(public).argv, str(secret)))


def escapes(public: Path, secret: Path) -> list[str]:
    return [
        f"{public}/../secret/key",
        str(public / "link"),
        str(public / "dirlink" / "key"),
        str(secret / "key"),
        "/etc/passwd",
    ]


async def test_the_filesystem_server_alone_serves_the_secret_through_every_escape(tmp_path: Path) -> None:
    # The control for the tests below: any refusal there is mcpshield's, not the server's.
    public, secret = secret_tree(tmp_path)
    with anyio.fail_after(SESSION_TIMEOUT):
        async with Client(direct(both_directories(public, secret))) as client:
            for path in escapes(public, secret)[:4]:
                assert CANARY in text_of(await client.call_tool("read_text_file", {"path": path})), path


async def test_a_filesystem_profile_hides_denied_and_unnamed_tools(tmp_path: Path) -> None:
    public, secret = secret_tree(tmp_path)
    profile = write_profile(tmp_path, FILESYSTEM_PROFILE, public=public)
    params = shield(both_directories(public, secret), profile, tmp_path / "config")
    async with session(params, tmp_path / "stderr.txt") as client:
        assert await tool_names(client) == VISIBLE_FILESYSTEM_TOOLS
        with pytest.raises(MCPError) as raised:
            await client.call_tool("move_file", {"source": str(secret / "key"), "destination": str(public / "k")})
        with pytest.raises(MCPError) as unnamed:
            await client.call_tool("list_allowed_directories", {})
    assert (raised.value.code, raised.value.message) == (INVALID_PARAMS, "Unknown tool: move_file")
    assert (unnamed.value.code, unnamed.value.message) == (INVALID_PARAMS, "Unknown tool: list_allowed_directories")
    assert (secret / "key").read_text() == CANARY
    assert not (public / "k").exists()


async def test_filesystem_reads_stay_inside_public_past_traversal_and_symlinks(tmp_path: Path) -> None:
    public, secret = secret_tree(tmp_path)
    profile = write_profile(tmp_path, FILESYSTEM_PROFILE, public=public)
    params = shield(both_directories(public, secret), profile, tmp_path / "config")
    refusals: dict[str, str] = {}
    async with session(params, tmp_path / "stderr.txt") as client:
        readme = await client.call_tool("read_text_file", {"path": str(public / "readme.txt")})
        listing = await client.call_tool("list_directory", {"path": str(public)})
        for path in escapes(public, secret):
            refusals[path] = refusal(await client.call_tool("read_text_file", {"path": path}))
        into_secret = refusal(await client.call_tool("list_directory", {"path": str(public / "dirlink")}))
    assert not readme.is_error and text_of(readme) == "nothing to see here\n"
    assert "readme.txt" in text_of(listing)
    for path, text in [*refusals.items(), ("dirlink listing", into_secret)]:
        assert text.startswith("mcpshield refused this call:"), (path, text)
        assert f"path must be inside {public}" in text, (path, text)
        assert CANARY not in text, path
    assert f"which resolves to {secret / 'key'}" in refusals[str(public / "link")]
    assert f"which is {secret / 'key'}" in refusals[f"{public}/../secret/key"]


async def test_filesystem_write_under_ask_is_refused_without_an_approver_and_creates_nothing(tmp_path: Path) -> None:
    public, secret = secret_tree(tmp_path)
    profile = write_profile(tmp_path, FILESYSTEM_PROFILE, public=public)
    params = shield(both_directories(public, secret), profile, tmp_path / "config")
    async with session(params, tmp_path / "stderr.txt") as client:
        result = await client.call_tool("write_file", {"path": str(public / "new.txt"), "content": "hello"})
    assert "no approver is available" in refusal(result)
    assert not (public / "new.txt").exists()


async def test_read_multiple_files_with_one_path_outside_public_is_refused_as_a_whole(tmp_path: Path) -> None:
    public, secret = secret_tree(tmp_path)
    profile = write_profile(tmp_path, FILESYSTEM_PROFILE, public=public)
    params = shield(both_directories(public, secret), profile, tmp_path / "config")
    async with session(params, tmp_path / "stderr.txt") as client:
        good = str(public / "readme.txt")
        both = await client.call_tool("read_multiple_files", {"paths": [good, str(public / "link")]})
        alone = await client.call_tool("read_multiple_files", {"paths": [good]})
    text = refusal(both)
    assert "paths must be inside" in text and CANARY not in text
    assert "nothing to see here" not in text  # refused whole: not even the good file was read
    assert not alone.is_error and "nothing to see here" in text_of(alone)


async def test_a_unicode_equivalent_spelling_of_a_symlink_is_judged_where_the_server_follows_it(tmp_path: Path) -> None:
    # server-filesystem maps a name missing on disk to an entry equal to it under NFC, then follows
    # that entry's symlink. mcpshield's realpath finds no such name and judges the path as written.
    public, secret = secret_tree(tmp_path)
    spelled_on_disk = unicodedata.normalize("NFC", "l\u00efnk")
    (public / spelled_on_disk).symlink_to(Path("..") / "secret" / "key")
    requested = public / unicodedata.normalize("NFD", spelled_on_disk)
    profile = write_profile(tmp_path, FILESYSTEM_PROFILE, public=public)
    params = shield(both_directories(public, secret), profile, tmp_path / "config")
    async with session(params, tmp_path / "stderr.txt") as client:
        result = await client.call_tool("read_text_file", {"path": str(requested)})
    assert CANARY not in text_of(result), (
        "an NFD spelling of public/l\u00efnk must be judged where server-filesystem takes it: "
        "to the NFC-named symlink, into secret/, outside the profile's `within`"
    )
    assert refusal(result).startswith("mcpshield refused this call:")


# -- server-filesystem with the shipped profile, picked by its command line ----------------------


async def test_the_shipped_filesystem_profile_is_picked_by_the_command_and_keeps_ssh_closed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ssh_key = home / ".ssh" / "id_ed25519"
    ssh_key.parent.mkdir(parents=True)
    ssh_key.write_text(CANARY)
    (home / "notes.txt").write_text("my notes\n")
    errlog = tmp_path / "stderr.txt"
    params = shield(filesystem(home), None, tmp_path / "config", home=home)
    async with session(params, errlog) as client:
        names = await tool_names(client)
        notes = await client.call_tool("read_text_file", {"path": str(home / "notes.txt")})
        key = await client.call_tool("read_text_file", {"path": str(ssh_key)})
        listing = await client.call_tool("list_directory", {"path": str(home / ".ssh")})
        several = await client.call_tool("read_multiple_files", {"paths": [str(home / "notes.txt"), str(ssh_key)]})
        write = await client.call_tool("write_file", {"path": str(home / "new.txt"), "content": "hello"})
    assert "mcpshield: enforcing profile filesystem" in errlog.read_text()
    # Every tool this server version lists is named by the shipped profile: none is hidden.
    assert {"read_text_file", "read_multiple_files", "write_file", "move_file", "edit_file"} <= names
    assert text_of(notes) == "my notes\n"
    assert "credentials directory" in refusal(key)
    assert "credentials directory" in refusal(listing)
    assert "credentials directory" in refusal(several)
    assert "no approver is available" in refusal(write)
    assert all(CANARY not in text_of(result) for result in (key, listing, several))
    assert not (home / "new.txt").exists()


async def test_a_relative_path_into_ssh_is_refused_by_the_shipped_filesystem_profile(tmp_path: Path) -> None:
    # server-filesystem resolves a relative path against its allowed directories, not against its
    # working directory (which it shares with mcpshield, here the repository's root).
    home = tmp_path / "home"
    ssh_key = home / ".ssh" / "id_ed25519"
    ssh_key.parent.mkdir(parents=True)
    ssh_key.write_text(CANARY)
    params = shield(filesystem(home), None, tmp_path / "config", home=home)
    async with session(params, tmp_path / "stderr.txt") as client:
        result = await client.call_tool("read_text_file", {"path": ".ssh/id_ed25519"})
    assert CANARY not in text_of(result), (
        "a relative path cannot be checked (server-filesystem resolves .ssh/id_ed25519 against its "
        "allowed directory ~, not mcpshield's working directory), so it must be refused"
    )
    assert refusal(result).startswith("mcpshield refused this call:")


# -- mcp-server-git: read-only, inside one repository --------------------------------------------

GIT_PROFILE = """
[server]
name = "git-read-only"

[tools]
default = "deny"
deny = ["git_commit", "git_add", "git_reset", "git_checkout", "git_create_branch"]

[[rules]]
tool = ["git_status", "git_log", "git_diff*", "git_show"]
action = "allow"
[rules.args.repo_path]
within = [{repo}]
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


async def test_a_read_only_git_profile_hides_commits_and_keeps_calls_inside_the_repository(tmp_path: Path) -> None:
    repo = make_git_repo(tmp_path / "repo")
    other = make_git_repo(tmp_path / "other")
    (repo / "staged.txt").write_text("staged, never committed\n")
    git(repo, "add", "staged.txt")
    profile = write_profile(tmp_path, GIT_PROFILE, repo=repo)
    async with session(shield(git_server(repo), profile, tmp_path / "config"), tmp_path / "stderr.txt") as client:
        era = client.protocol_version
        names = await tool_names(client)
        status = await client.call_tool("git_status", {"repo_path": str(repo)})
        log = await client.call_tool("git_log", {"repo_path": str(repo)})
        with pytest.raises(MCPError) as commit:
            await client.call_tool("git_commit", {"repo_path": str(repo), "message": "sneaky"})
        outside = await client.call_tool("git_status", {"repo_path": str(other)})
        traversal = await client.call_tool("git_log", {"repo_path": f"{repo}/../other"})
    assert era == "2026-07-28"  # so each refusal below had to carry resultType "complete"
    assert names == {"git_status", "git_log", "git_diff", "git_diff_staged", "git_diff_unstaged", "git_show"}
    assert not status.is_error and "staged.txt" in text_of(status)
    assert not log.is_error and "first" in text_of(log)
    assert (commit.value.code, commit.value.message) == (INVALID_PARAMS, "Unknown tool: git_commit")
    assert git(repo, "rev-list", "--count", "HEAD").strip() == "1"
    assert f"repo_path must be inside {repo}" in refusal(outside)
    assert f"which is {other}" in refusal(traversal)


# -- server-everything: one tool and sampling denied; resources filtered -------------------------

EVERYTHING_PROFILE = """
[server]
name = "everything-without-env"

[tools]
default = "allow"
deny = ["get-env"]

[resources]
deny = ["demo://resource/static/document/instructions.md", "demo://resource/dynamic/*"]

[prompts]
deny = ["resource-prompt"]

[server_requests]
sampling = "deny"
"""


async def test_a_denied_tool_and_denied_sampling_leave_the_rest_of_everything_working(tmp_path: Path) -> None:
    sampled: list[types.CreateMessageRequestParams] = []

    async def sample(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        sampled.append(params)
        reply = types.TextContent(type="text", text="a canned completion")
        return types.CreateMessageResult(role="assistant", content=reply, model="fake-model", stop_reason="endTurn")

    profile = write_profile(tmp_path, EVERYTHING_PROFILE)
    params = shield(everything(), profile, tmp_path / "config")
    async with session(params, tmp_path / "stderr.txt", sampling_callback=sample) as client:
        names = await tool_names(client)
        with pytest.raises(MCPError) as env:
            await client.call_tool("get-env", {})
        echo = await client.call_tool("echo", {"message": "still here"})
        total = await client.call_tool("get-sum", {"a": 2, "b": 40})
        sampling = await client.call_tool("trigger-sampling-request", {"prompt": "say hi"})
    assert "get-env" not in names and {"echo", "get-sum"} <= names
    # mcpshield withholds the sampling capability from initialize, so the server never even
    # registers its sampling tool (tests/test_real_servers.py shows it does with --profile none).
    assert "trigger-sampling-request" not in names
    assert (env.value.code, env.value.message) == (INVALID_PARAMS, "Unknown tool: get-env")
    assert text_of(echo) == "Echo: still here"
    assert text_of(total) == "The sum of 2 and 40 is 42."
    assert "trigger-sampling-request" in refusal(sampling)
    assert sampled == []


async def test_denied_resources_are_missing_from_the_lists_and_cannot_be_read_or_completed(tmp_path: Path) -> None:
    profile = write_profile(tmp_path, EVERYTHING_PROFILE)
    async with session(shield(everything(), profile, tmp_path / "config"), tmp_path / "stderr.txt") as client:
        uris = [resource.uri for resource in (await client.list_resources()).resources]
        templates = (await client.list_resource_templates()).resource_templates
        allowed = await client.read_resource(f"{DOCUMENTS}/architecture.md")
        with pytest.raises(MCPError) as static:
            await client.read_resource(f"{DOCUMENTS}/instructions.md")
        with pytest.raises(MCPError) as dynamic:
            await client.read_resource("demo://resource/dynamic/text/1")
        with pytest.raises(MCPError) as completion:
            await client.complete(DYNAMIC_TEXT, {"name": "resourceId", "value": "1"})
    assert f"{DOCUMENTS}/architecture.md" in uris and f"{DOCUMENTS}/instructions.md" not in uris
    assert templates == []  # both of the server's templates lie under demo://resource/dynamic/
    assert allowed.contents
    assert (static.value.code, static.value.message) == (
        RESOURCE_NOT_FOUND,
        f"Resource not found: {DOCUMENTS}/instructions.md",
    )
    assert (dynamic.value.code, dynamic.value.message) == (
        RESOURCE_NOT_FOUND,
        "Resource not found: demo://resource/dynamic/text/1",
    )
    assert (completion.value.code, completion.value.message) == (
        RESOURCE_NOT_FOUND,
        f"Resource not found: {DYNAMIC_TEXT.uri}",
    )


async def test_a_denied_prompt_is_missing_from_the_list_and_cannot_be_got_or_completed(tmp_path: Path) -> None:
    profile = write_profile(tmp_path, EVERYTHING_PROFILE)
    async with session(shield(everything(), profile, tmp_path / "config"), tmp_path / "stderr.txt") as client:
        names = {prompt.name for prompt in (await client.list_prompts()).prompts}
        simple = await client.get_prompt("simple-prompt")
        with pytest.raises(MCPError) as got:
            await client.get_prompt("resource-prompt", {"resourceType": "Text", "resourceId": "1"})
        denied = types.PromptReference(type="ref/prompt", name="resource-prompt")
        with pytest.raises(MCPError) as completion:
            await client.complete(denied, {"name": "resourceId", "value": "1"})
        allowed = types.PromptReference(type="ref/prompt", name="completable-prompt")
        completed = await client.complete(allowed, {"name": "department", "value": "E"})
    assert "resource-prompt" not in names and {"simple-prompt", "completable-prompt"} <= names
    assert simple.messages
    assert (got.value.code, got.value.message) == (INVALID_PARAMS, "Unknown prompt: resource-prompt")
    assert (completion.value.code, completion.value.message) == (INVALID_PARAMS, "Unknown prompt: resource-prompt")
    assert completed.completion.values


# -- mcp-server-time with the shipped profile -----------------------------------------------------


async def test_the_shipped_time_profile_is_picked_and_refuses_arguments_the_schema_does_not_declare(
    tmp_path: Path,
) -> None:
    errlog = tmp_path / "stderr.txt"
    async with session(shield(time_server(), None, tmp_path / "config"), errlog) as client:
        names = await tool_names(client)
        now = await client.call_tool("get_current_time", {"timezone": "UTC"})
        extra = await client.call_tool("get_current_time", {"timezone": "UTC", "format": "unix"})
    assert "mcpshield: enforcing profile time" in errlog.read_text()
    assert names == {"get_current_time", "convert_time"}
    assert not now.is_error and '"timezone": "UTC"' in text_of(now)
    assert 'unexpected argument "format"' in refusal(extra)


# -- a call before any tools/list ----------------------------------------------------------------


@dataclass(frozen=True)
class FirstCall:
    """A server its shipped profile is picked for, the era it negotiates, and a tool call's valid
    arguments (given the test's directory)."""

    era: str
    launch: Callable[[Path], ServerCommand]
    tool: str
    arguments: Callable[[Path], JSON]


def notes_server(tmp_path: Path) -> ServerCommand:
    (tmp_path / "notes.txt").write_text("my notes\n")
    return filesystem(tmp_path)


FIRST_CALLS = [
    pytest.param(
        FirstCall("2026-07-28", lambda _: time_server(), "get_current_time", lambda _: {"timezone": "UTC"}),
        id="time",
    ),
    pytest.param(
        FirstCall("2025-11-25", notes_server, "read_text_file", lambda tmp: {"path": str(tmp / "notes.txt")}),
        id="filesystem",
    ),
]


@pytest.mark.parametrize("first", FIRST_CALLS)
async def test_a_call_before_any_listing_is_judged_against_the_list_mcpshield_fetches_itself(
    first: FirstCall, tmp_path: Path
) -> None:
    # The SDK client lists tools only after a call succeeds (to check its output schema), never
    # after a refused one. So the schema that refuses the first call below can only come from a
    # tools/list mcpshield sent on its own, in whichever era the server speaks.
    server = first.launch(tmp_path)
    arguments = first.arguments(tmp_path)
    async with session(shield(server, None, tmp_path / "config"), tmp_path / "stderr.txt") as client:
        era = client.protocol_version
        refused = await client.call_tool(first.tool, {**arguments, "format": "raw"})
        answered = await client.call_tool(first.tool, arguments)
    assert era == first.era
    assert 'unexpected argument "format"' in refusal(refused)
    assert not answered.is_error
