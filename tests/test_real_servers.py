"""Tier 3: the official SDK client against real MCP servers, direct and through ``mcpshield run``.

The wrapper must be invisible: same tools, same results, every server-to-client feature intact,
big and concurrent traffic unharmed, and no process left behind however the session ends.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import psutil
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp.client import Client
from mcp.client.session import ClientRequestContext
from mcp.client.stdio import StdioServerParameters
from pydantic import FileUrl
from realservers import (
    CLIENT_SCRIPT,
    EXIT_TIMEOUT,
    READ_TIMEOUT,
    REPO_ROOT,
    ServerCommand,
    describe,
    direct,
    everything,
    everything_via_npx,
    filesystem,
    git_server,
    kill_all,
    make_git_repo,
    survivors_after,
    time_server,
    tree,
    wrapped,
    wrapper_argv,
    wrapper_session,
)

pytestmark = [pytest.mark.real, pytest.mark.anyio]

SESSION_TIMEOUT = 30.0
"""Bound on one whole client session against a real server, start-up and shutdown included."""

TEN_MB = 10_000_000
"""Just under the 10 MiB line the TypeScript SDK's stdio reader drops silently."""

CONCURRENT_CALLS = 200

JSON = dict[str, Any]
Launch = Callable[[], ServerCommand]
LAUNCHES = [pytest.param(everything, id="node"), pytest.param(everything_via_npx, id="npx")]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass(frozen=True)
class Probe:
    """A real server and deterministic calls whose results must not depend on the wrapper."""

    server: ServerCommand
    calls: tuple[tuple[str, JSON], ...]


@pytest.fixture(params=["everything", "filesystem", "time", "git"])
def probe(request: pytest.FixtureRequest, tmp_path: Path) -> Probe:
    name: str = request.param
    if name == "everything":
        return Probe(everything(), (("echo", {"message": "hello"}), ("get-sum", {"a": 2, "b": 40})))
    if name == "filesystem":
        (tmp_path / "note.txt").write_text("a line\nanother line\n")
        calls = (
            ("read_text_file", {"path": str(tmp_path / "note.txt")}),
            ("list_directory", {"path": str(tmp_path)}),
        )
        return Probe(filesystem(tmp_path), calls)
    if name == "time":
        conversion = {"source_timezone": "Europe/Paris", "time": "12:00", "target_timezone": "Asia/Tokyo"}
        return Probe(time_server(), (("convert_time", conversion),))
    repo = make_git_repo(tmp_path / "repo")
    return Probe(git_server(repo), (("git_status", {"repo_path": str(repo)}), ("git_log", {"repo_path": str(repo)})))


async def _listing(params: StdioServerParameters) -> tuple[str, list[tuple[str, JSON]]]:
    with anyio.fail_after(SESSION_TIMEOUT):
        async with Client(params) as client:
            tools = (await client.list_tools()).tools
            return client.protocol_version, [(tool.name, tool.input_schema) for tool in tools]


async def _results(params: StdioServerParameters, calls: tuple[tuple[str, JSON], ...]) -> list[JSON]:
    with anyio.fail_after(SESSION_TIMEOUT):
        async with Client(params) as client:
            return [(await client.call_tool(name, arguments)).model_dump(mode="json") for name, arguments in calls]


def _text(result: types.CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, types.TextContent))


async def test_wrapped_server_negotiates_the_same_version_and_lists_the_same_tools(probe: Probe) -> None:
    expected = await _listing(direct(probe.server))
    assert await _listing(wrapped(probe.server)) == expected


async def test_wrapped_server_answers_calls_exactly_as_direct(probe: Probe) -> None:
    expected = await _results(direct(probe.server), probe.calls)
    assert await _results(wrapped(probe.server), probe.calls) == expected


async def test_sampling_request_reaches_the_client_callback_through_the_wrapper() -> None:
    prompts: list[str] = []

    async def sample(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        content = params.messages[0].content
        prompts.append(content.text if isinstance(content, types.TextContent) else "")
        reply = types.TextContent(type="text", text="a canned completion")
        return types.CreateMessageResult(role="assistant", content=reply, model="fake-model", stop_reason="endTurn")

    with anyio.fail_after(SESSION_TIMEOUT):
        async with Client(wrapped(everything()), sampling_callback=sample) as client:
            result = await client.call_tool("trigger-sampling-request", {"prompt": "say hi"})
    assert prompts == ["Resource trigger-sampling-request context: say hi"]
    assert "a canned completion" in _text(result)


async def test_elicitation_request_reaches_the_client_callback_through_the_wrapper() -> None:
    async def elicit(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"name": "Ada Lovelace"})

    with anyio.fail_after(SESSION_TIMEOUT):
        async with Client(wrapped(everything()), elicitation_callback=elicit) as client:
            result = await client.call_tool("trigger-elicitation-request", {})
    assert "- Name: Ada Lovelace" in _text(result)


async def test_roots_request_and_its_log_message_cross_the_wrapper() -> None:
    logged: list[str] = []

    async def list_roots(context: ClientRequestContext) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri=FileUrl("file:///srv/project"), name="project")])

    async def log(params: types.LoggingMessageNotificationParams) -> None:
        logged.append(str(params.data))

    with anyio.fail_after(SESSION_TIMEOUT):
        async with Client(wrapped(everything()), list_roots_callback=list_roots, logging_callback=log) as client:
            result = await client.call_tool("get-roots-list", {})
    assert "URI: file:///srv/project" in _text(result)
    # The server sends this log line before it answers, and the relay keeps order.
    assert "Roots updated: 1 root(s) received from client" in logged


async def test_log_notifications_reach_the_client_through_the_wrapper() -> None:
    arrived = anyio.Event()

    async def log(params: types.LoggingMessageNotificationParams) -> None:
        arrived.set()

    with anyio.fail_after(SESSION_TIMEOUT):
        async with Client(wrapped(everything()), logging_callback=log) as client:
            await client.call_tool("toggle-simulated-logging", {})
            await arrived.wait()
            await client.call_tool("toggle-simulated-logging", {})


async def test_progress_notifications_arrive_in_order_through_the_wrapper() -> None:
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    with anyio.fail_after(SESSION_TIMEOUT):
        async with Client(wrapped(everything())) as client:
            arguments = {"duration": 0.3, "steps": 3}
            result = await client.call_tool("trigger-long-running-operation", arguments, None, on_progress)
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert "Long running operation completed" in _text(result)


async def test_a_cancelled_call_leaves_the_wrapped_session_usable() -> None:
    running = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        running.set()

    with anyio.fail_after(SESSION_TIMEOUT):
        async with Client(wrapped(everything())) as client:
            async with anyio.create_task_group() as group:
                # The server runs a cancelled call to its end; a short one lets it exit promptly after.
                arguments = {"duration": 1, "steps": 10}
                group.start_soon(client.call_tool, "trigger-long-running-operation", arguments, None, on_progress)
                await running.wait()
                group.cancel_scope.cancel()
            result = await client.call_tool("echo", {"message": "still here"})
    assert _text(result) == "Echo: still here"


async def test_a_cancelled_request_is_never_answered_through_the_wrapper() -> None:
    async with wrapper_session(everything()) as (session, _):
        params = {
            "name": "trigger-long-running-operation",
            "arguments": {"duration": 0.5, "steps": 5},
            "_meta": {"progressToken": "doomed"},
        }
        await session.send({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params})
        seen = await session.receive_until("notifications/progress")
        await session.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}})
        # The server keeps reporting progress for the cancelled call and would answer right after
        # the last step; a ping sent after that step is answered after any such answer.
        while seen[-1].get("params", {}).get("progress") != 5:
            seen += await session.receive_until("notifications/progress")
        await session.send({"jsonrpc": "2.0", "id": 8, "method": "ping"})
        seen += await session.receive_until("response", 8)
    assert [message for message in seen if message.get("id") == 7] == []


async def test_ten_megabytes_cross_the_wrapper_both_ways_intact() -> None:
    message = "".join(chr(ord("a") + i % 26) for i in range(TEN_MB))
    with anyio.fail_after(SESSION_TIMEOUT):
        async with Client(wrapped(everything())) as client:
            result = await client.call_tool("echo", {"message": message})
    assert _text(result) == f"Echo: {message}"


async def test_line_separators_inside_strings_cross_the_wrapper_unchanged() -> None:
    # Raw U+2028, U+2029 and U+0085 are legal inside a JSON line; only \n ends a message.
    message = "one\u2028two\u2029three\u0085four\r five é 😀"
    with anyio.fail_after(SESSION_TIMEOUT):
        async with Client(wrapped(everything())) as client:
            result = await client.call_tool("echo", {"message": message})
    assert _text(result) == f"Echo: {message}"


async def test_two_hundred_concurrent_calls_each_get_their_own_answer_through_the_wrapper() -> None:
    answers: dict[int, str] = {}

    async def call(client: Client, n: int) -> None:
        answers[n] = _text(await client.call_tool("get-sum", {"a": n, "b": 1_000_000}))

    with anyio.fail_after(SESSION_TIMEOUT):
        async with Client(wrapped(everything())) as client, anyio.create_task_group() as group:
            for n in range(CONCURRENT_CALLS):
                group.start_soon(call, client, n)
    assert answers == {n: f"The sum of {n} and 1000000 is {n + 1_000_000}." for n in range(CONCURRENT_CALLS)}


# No process left behind: every way a session can end, for node started directly and through npx.


@pytest.mark.parametrize("launch", LAUNCHES)
async def test_ending_an_sdk_client_session_leaves_no_process_behind(launch: Launch) -> None:
    recorded: list[psutil.Process] = []
    before = {child.pid for child in psutil.Process().children()}
    try:
        with anyio.fail_after(SESSION_TIMEOUT):
            async with Client(wrapped(launch())) as client:
                await client.call_tool("echo", {"message": "bye"})
                recorded = _trees_of_children_not_in(before)
        assert recorded, "found no wrapper process under the test"
        survivors = await survivors_after(recorded)
        assert not survivors, f"left behind: {describe(survivors)}"
    finally:
        kill_all(recorded)


def _trees_of_children_not_in(before: set[int]) -> list[psutil.Process]:
    new = [child.pid for child in psutil.Process().children() if child.pid not in before]
    return [process for pid in new for process in tree(pid)]


@pytest.mark.parametrize("launch", LAUNCHES)
async def test_wrapper_exits_cleanly_with_its_server_when_an_idle_client_closes_stdin(launch: Launch) -> None:
    async with wrapper_session(launch()) as (session, recorded):
        await session.close_stdin()
        survivors = await survivors_after(recorded)
        assert not survivors, f"left behind: {describe(survivors)}"
        with anyio.fail_after(READ_TIMEOUT):
            assert await session.process.wait() == 0


@pytest.mark.parametrize("launch", LAUNCHES)
async def test_closing_stdin_during_a_call_leaves_no_process_behind(launch: Launch) -> None:
    async with wrapper_session(launch()) as (session, recorded):
        await session.start_long_call(1)
        await session.close_stdin()
        survivors = await survivors_after(recorded)
        assert not survivors, f"left behind: {describe(survivors)}"


@pytest.mark.parametrize("launch", LAUNCHES)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
async def test_signalling_the_wrapper_during_a_call_leaves_no_process_behind(
    launch: Launch, signum: signal.Signals
) -> None:
    async with wrapper_session(launch()) as (session, recorded):
        await session.start_long_call(1)
        session.process.send_signal(signum)
        survivors = await survivors_after(recorded)
        assert not survivors, f"left behind after {signum.name}: {describe(survivors)}"


@pytest.mark.parametrize("launch", LAUNCHES)
async def test_killing_the_clients_process_group_leaves_no_process_behind(launch: Launch) -> None:
    argv = [sys.executable, "-c", CLIENT_SCRIPT, *wrapper_argv(launch())]
    client = await anyio.open_process(argv, cwd=REPO_ROOT, stderr=None, start_new_session=True)
    recorded: list[psutil.Process] = []
    try:
        assert client.stdout is not None
        with anyio.fail_after(READ_TIMEOUT):
            ready = await BufferedByteReceiveStream(client.stdout).receive_until(b"\n", 64)
        assert ready.isdigit(), f"the stand-in client did not get the wrapper going: {ready!r}"
        recorded = tree(client.pid)
        os.killpg(client.pid, signal.SIGKILL)
        survivors = await survivors_after(recorded)
        assert not survivors, f"left behind: {describe(survivors)}"
    finally:
        kill_all([*recorded, *tree(client.pid)])
        with anyio.move_on_after(EXIT_TIMEOUT, shield=True):
            await client.aclose()
