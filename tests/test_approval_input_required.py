"""The 2026-07-28 era: no server requests, so the client's user is asked through an
`input_required` result carrying mcpshield's own elicitation, and the client's retry carries the
answer (multi round-trip requests, SEP-2322).

A raw line client speaks the era's wire format to `mcpshield run` around the fake server (the era
is what each request's `_meta` says); the official SDK client then does the same against a real
2026-era server, `mcp-server-time`, answering through its elicitation callback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from conftest import ROOT, LineClient, environ_with, fake_argv
from mcp.client import Client
from mcp.client.session import ClientRequestContext
from mcp.client.stdio import StdioServerParameters, stdio_client
from realservers import time_server

from mcpshield.approval.mrtr import CAPABILITIES_META, CLIENT_INFO_META, PROTOCOL_META

JSON = dict[str, Any]
Shield = Any

#: Bound on one whole SDK client session through the wrapper, start-up and shutdown included.
SESSION_TIMEOUT_S = 45.0

PROFILE = """
[tools]
allow = ["echo"]
ask = ["write_file", "get_current_time", "needs_input"]

[approval]
timeout_s = 20
"""


def _meta(elicitation: bool = True) -> JSON:
    return {
        PROTOCOL_META: "2026-07-28",
        CLIENT_INFO_META: {"name": "raw-2026", "version": "1"},
        CAPABILITIES_META: {"elicitation": {}} if elicitation else {},
    }


def _wrapper(shield: Shield, tmp_path: Path) -> LineClient:
    """`mcpshield run` around the fake server, no approver running, no initialize (this era has none)."""
    profile = tmp_path / "ask.toml"
    profile.write_text(PROFILE)
    empty = tmp_path / "approver"
    empty.mkdir(mode=0o700)
    env = environ_with(MCPSHIELD_APPROVER_DIR=str(empty), MCPSHIELD_LOG_DIR=str(tmp_path / "logs"))
    client: LineClient = shield(*fake_argv(), flags=["--profile", str(profile)], env=env)
    client.request("list", "tools/list", {"_meta": _meta()})
    client.answer_for("list")
    return client


def _call(client: LineClient, request_id: int, target: Path, **extra: Any) -> JSON:
    params = {"name": "write_file", "arguments": {"path": str(target), "content": "ok"}, "_meta": _meta(), **extra}
    client.request(request_id, "tools/call", params)
    result: JSON = client.answer_for(request_id)["result"]
    return result


def _accept(decision: str) -> JSON:
    return {"action": "accept", "content": {"decision": decision}}


def test_the_client_is_asked_in_an_input_required_result_and_its_retry_runs_the_call(
    shield: Shield, tmp_path: Path
) -> None:
    client = _wrapper(shield, tmp_path)
    target = tmp_path / "out.txt"
    first = _call(client, 2, target)
    assert first["resultType"] == "input_required" and "requestState" not in first
    ((key, asked),) = first["inputRequests"].items()
    assert key.startswith("mcpshield-approval-")
    assert asked["method"] == "elicitation/create" and asked["params"]["mode"] == "form"
    assert "tool: write_file" in asked["params"]["message"] and str(target) in asked["params"]["message"]
    assert asked["params"]["requestedSchema"]["required"] == ["decision"]
    assert not target.exists()
    done = _call(client, 3, target, inputResponses={key: _accept("approve")})
    assert done.get("resultType", "complete") == "complete" and not done.get("isError")
    assert target.read_text() == "ok"
    again = _call(client, 4, target, inputResponses={key: _accept("approve")})  # an answer counts once
    assert again["resultType"] == "input_required"


def test_a_declined_answer_refuses_the_retry(shield: Shield, tmp_path: Path) -> None:
    client = _wrapper(shield, tmp_path)
    target = tmp_path / "out.txt"
    (key,) = _call(client, 2, target)["inputRequests"]
    refused = _call(client, 3, target, inputResponses={key: {"action": "decline"}})
    assert refused["isError"] is True and refused["resultType"] == "complete"
    assert refused["content"][0]["text"] == "mcpshield refused this call to write_file: the user declined in the client"
    assert not target.exists()


def test_an_answer_binds_to_its_own_call_only(shield: Shield, tmp_path: Path) -> None:
    client = _wrapper(shield, tmp_path)
    target, other = tmp_path / "out.txt", tmp_path / "other.txt"
    (key,) = _call(client, 2, target)["inputRequests"]
    elsewhere = _call(client, 3, other, inputResponses={key: _accept("approve")})  # other arguments
    assert elsewhere["resultType"] == "input_required"
    forged = _call(client, 4, target, inputResponses={"mcpshield-approval-" + "0" * 32: _accept("approve")})
    assert forged["resultType"] == "input_required"
    assert not target.exists() and not other.exists()


def test_the_servers_own_input_round_continues_the_approved_call_without_asking_again(
    shield: Shield, tmp_path: Path
) -> None:
    client = _wrapper(shield, tmp_path)
    params = {"name": "needs_input", "arguments": {"method": "elicitation/create"}, "_meta": _meta()}
    client.request(2, "tools/call", params)
    (key,) = client.answer_for(2)["result"]["inputRequests"]  # mcpshield asks first
    client.request(3, "tools/call", {**params, "inputResponses": {key: _accept("approve")}})
    servers = client.answer_for(3)["result"]  # approved: the server's own question comes through
    assert servers["resultType"] == "input_required" and list(servers["inputRequests"]) == ["ask"]
    client.request(4, "tools/call", {**params, "inputResponses": {"ask": {"action": "accept", "content": {}}}})
    done = client.answer_for(4)["result"]  # the same call, continued: not asked about again
    assert done["resultType"] == "complete" and '"action": "accept"' in done["content"][0]["text"]
    client.request(5, "tools/call", {**params, "inputResponses": {"ask": {"action": "accept", "content": {}}}})
    assert list(client.answer_for(5)["result"]["inputRequests"]) != ["ask"]  # that round is used up: asked


def test_a_client_without_elicitation_in_this_era_is_refused_at_once(shield: Shield, tmp_path: Path) -> None:
    client = _wrapper(shield, tmp_path)
    params = {"name": "write_file", "arguments": {"path": str(tmp_path / "x"), "content": "ok"}}
    client.request(2, "tools/call", {**params, "_meta": _meta(elicitation=False)})
    refused = client.answer_for(2)["result"]
    assert refused["isError"] is True and "no approver is available" in refused["content"][0]["text"]


@pytest.mark.real
@pytest.mark.anyio
@pytest.mark.parametrize(("decision", "runs"), [("approve", True), ("deny", False)])
async def test_the_sdk_client_answers_through_its_elicitation_callback_against_a_2026_server(
    tmp_path: Path, decision: str, runs: bool
) -> None:
    profile = tmp_path / "ask-time.toml"
    profile.write_text(PROFILE)
    empty = tmp_path / "approver"
    empty.mkdir(mode=0o700)
    argv = [sys.executable, "-m", "mcpshield", "run", "--profile", str(profile), "--", *time_server().argv]
    env = {"MCPSHIELD_APPROVER_DIR": str(empty), "MCPSHIELD_LOG_DIR": str(tmp_path / "logs")}
    params = StdioServerParameters(command=argv[0], args=argv[1:], cwd=ROOT, env=env)
    asked: list[str] = []

    async def answer(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"decision": decision})

    with (tmp_path / "stderr.txt").open("w") as stderr, anyio.fail_after(SESSION_TIMEOUT_S):
        async with Client(stdio_client(params, errlog=stderr), elicitation_callback=answer) as client:
            assert client.protocol_version == "2026-07-28"
            result = await client.call_tool("get_current_time", {"timezone": "UTC"})
    assert len(asked) == 1 and "tool: get_current_time" in asked[0]
    text = "\n".join(block.text for block in result.content if isinstance(block, types.TextContent))
    assert bool(result.is_error) is not runs
    assert ("declined in the client" in text) is not runs


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
