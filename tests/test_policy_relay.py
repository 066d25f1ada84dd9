"""Tier 2: profiles enforced by `mcpshield run` on the fake server, a real subprocess.

The fake server records every line it reads, so each test can show that a refused call never
reached it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import LineClient, fake_argv
from fake_server import TOOLS

PROFILE = """
[server]
name = "fake"

[tools]
default = "deny"
allow = ["echo", "read_file", "sleep", "needs_input", "ask_client"]
ask = ["fetch"]
deny = ["env"]

[approval]
elicitation = false   # the test client declares elicitation but answers none

[[rules]]
tool = "write_file"
action = "allow"
[rules.args.path]
within = ["{public}"]

[[rules]]
tool = "read_file"
action = "deny"
reason = "secrets stay secret"
[rules.args.path]
within = ["{secret}"]

[resources]
deny = ["fake://secret/*"]

[prompts]
default = "deny"
allow = ["greet"]

[server_requests]
sampling = "deny"
roots_within = ["{public}"]

[limits]
identical_calls_per_minute = 3
"""

Start = Callable[..., LineClient]


def start(shield: Start, tmp_path: Path, *server_flags: str) -> tuple[LineClient, Path]:
    public, secret = tmp_path / "public", tmp_path / "secret"
    public.mkdir()
    secret.mkdir()
    (secret / "key").write_text("hunter2")
    (public / "link").symlink_to(secret / "key")
    profile = tmp_path / "fake.toml"
    profile.write_text(PROFILE.format(public=public, secret=secret))
    record = tmp_path / "server-input.jsonl"
    client = shield(*fake_argv("--record", str(record), *server_flags), flags=["--profile", str(profile)])
    client.initialize()
    return client, record


def listed(shield: Start, tmp_path: Path) -> LineClient:
    """A started session whose client has listed the tools, as clients do first."""
    client, _ = start(shield, tmp_path)
    list_tools(client)
    return client


def seen_by_server(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record.read_text().splitlines() if line.strip()]


def list_tools(client: LineClient, cursor: str | None = None) -> dict[str, Any]:
    client.request("list", "tools/list", {"cursor": cursor} if cursor else {})
    result: dict[str, Any] = client.answer_for("list")["result"]
    return result


def text_of(answer: dict[str, Any]) -> str:
    return str(answer["result"]["content"][0]["text"])


def refusal_text(answer: dict[str, Any]) -> str:
    """The text of a tool-level refusal (a result with isError)."""
    assert answer["result"]["isError"] is True, answer
    return text_of(answer)


def test_tools_list_shows_only_what_the_profile_lets_run(shield: Start, tmp_path: Path) -> None:
    client, _ = start(shield, tmp_path)
    names = [tool["name"] for tool in list_tools(client)["tools"]]
    assert names == ["echo", "sleep", "ask_client", "read_file", "write_file", "fetch", "needs_input"]


def test_every_page_of_tools_list_is_filtered(shield: Start, tmp_path: Path) -> None:
    client, _ = start(shield, tmp_path, "--page-size", "4")
    names: list[str] = []
    cursor = None
    for _ in range(10):
        page = list_tools(client, cursor)
        names += [tool["name"] for tool in page["tools"]]
        cursor = page.get("nextCursor")
        if cursor is None:
            break
    assert names == ["echo", "sleep", "ask_client", "read_file", "write_file", "fetch", "needs_input"]


def test_a_hidden_tool_is_refused_without_reaching_the_server(shield: Start, tmp_path: Path) -> None:
    client, record = start(shield, tmp_path)
    list_tools(client)
    client.call(1, "env")
    answer = client.answer_for(1)
    assert answer["error"]["code"] == -32602 and answer["error"]["message"] == "Unknown tool: env"
    client.call(2, "echo", {"text": "after"})
    assert text_of(client.answer_for(2)) == "after"
    assert not [m for m in seen_by_server(record) if m.get("params", {}).get("name") == "env"]


def test_path_rules_refuse_traversal_and_symlinks_out(shield: Start, tmp_path: Path) -> None:
    client, record = start(shield, tmp_path)
    list_tools(client)
    public = tmp_path / "public"
    attempts = [str(public / ".." / "secret" / "key"), str(public / "link"), "/etc/passwd"]
    for i, path in enumerate(attempts):
        client.call(i, "write_file", {"path": path, "content": "pwned"})
        answer = client.answer_for(i)
        assert answer["result"]["isError"] is True, path
        assert "inside" in text_of(answer)
    client.call("ok", "write_file", {"path": str(public / "note.txt"), "content": "fine"})
    assert client.answer_for("ok")["result"].get("isError") is not True
    assert (public / "note.txt").read_text() == "fine"
    assert (tmp_path / "secret" / "key").read_text() == "hunter2"
    writes = [m for m in seen_by_server(record) if m.get("params", {}).get("name") == "write_file"]
    assert [w["id"] for w in writes] == ["ok"]


def test_a_deny_rule_refuses_with_its_reason(shield: Start, tmp_path: Path) -> None:
    client = listed(shield, tmp_path)
    client.call(1, "read_file", {"path": str(tmp_path / "public" / "link")})
    answer = client.answer_for(1)
    assert answer["result"]["isError"] is True and "secrets stay secret" in text_of(answer)


def test_arguments_the_schema_does_not_declare_are_refused(shield: Start, tmp_path: Path) -> None:
    client = listed(shield, tmp_path)
    client.call(1, "echo", {"text": "hi", "extra": True})
    assert client.answer_for(1)["result"]["isError"] is True
    client.call(2, "echo", {"text": 5})
    assert client.answer_for(2)["result"]["isError"] is True


def test_ask_without_an_approver_is_refused(shield: Start, tmp_path: Path) -> None:
    client = listed(shield, tmp_path)
    client.call(1, "fetch", {"url": "https://example.com"})
    assert "approv" in refusal_text(client.answer_for(1))


def test_the_loop_breaker_stops_the_fourth_identical_call(shield: Start, tmp_path: Path) -> None:
    client = listed(shield, tmp_path)
    for i in range(3):
        client.call(i, "echo", {"text": "again"})
        assert text_of(client.answer_for(i)) == "again"
    client.call(3, "echo", {"text": "again"})
    assert "retry in" in refusal_text(client.answer_for(3))


def test_denied_sampling_never_reaches_the_client(shield: Start, tmp_path: Path) -> None:
    client = listed(shield, tmp_path)
    client.call(1, "ask_client", {"method": "sampling/createMessage", "params": {"messages": []}})
    answer = client.answer_for(1)
    assert "sampling" in text_of(answer)
    assert not [m for m in client.skipped if m.get("method") == "sampling/createMessage"]


def test_roots_answers_are_trimmed_before_the_server_sees_them(shield: Start, tmp_path: Path) -> None:
    client = listed(shield, tmp_path)
    client.call(1, "ask_client", {"method": "roots/list"})
    ask = client.read_until(lambda m: m.get("method") == "roots/list")
    roots = [{"uri": (tmp_path / "public").as_uri()}, {"uri": "file:///home"}]
    client.send({"jsonrpc": "2.0", "id": ask["id"], "result": {"roots": roots}})
    assert json.loads(text_of(client.answer_for(1))) == {"roots": roots[:1]}


def test_an_input_required_result_for_denied_sampling_is_refused(shield: Start, tmp_path: Path) -> None:
    client = listed(shield, tmp_path)
    client.call(1, "needs_input", {"method": "sampling/createMessage"})
    answer = client.answer_for(1)
    assert answer["result"]["isError"] is True and answer["result"]["resultType"] == "complete"
    client.call(2, "needs_input", {"method": "elicitation/create"})
    assert client.answer_for(2)["result"]["resultType"] == "input_required"


def test_resources_and_prompts_are_filtered_and_refused(shield: Start, tmp_path: Path) -> None:
    client, _ = start(shield, tmp_path)
    client.request(1, "resources/list", {})
    assert [r["uri"] for r in client.answer_for(1)["result"]["resources"]] == ["fake://public/readme"]
    client.request(2, "resources/read", {"uri": "fake://secret/key"})
    assert client.answer_for(2)["error"]["code"] == -32002
    client.request(3, "prompts/list", {})
    assert [p["name"] for p in client.answer_for(3)["result"]["prompts"]] == ["greet"]
    client.request(4, "prompts/get", {"name": "leak"})
    assert client.answer_for(4)["error"]["code"] == -32602


def test_a_refused_call_does_not_hold_up_the_others(shield: Start, tmp_path: Path) -> None:
    client = listed(shield, tmp_path)
    client.call("slow", "sleep", {"ms": 300})
    client.call("refused", "env")
    client.call("fast", "echo", {"text": "fast"})
    first = client.read_until(lambda m: "id" in m and "method" not in m)
    second = client.read_until(lambda m: "id" in m and "method" not in m)
    assert {first["id"], second["id"]} == {"refused", "fast"}
    assert client.answer_for("slow")["result"]["content"][0]["text"] == "slept 300 ms"


def test_a_call_before_any_tools_list_waits_for_mcpshield_to_fetch_the_list(shield: Start, tmp_path: Path) -> None:
    client, record = start(shield, tmp_path, "--page-size", "3")
    client.call(1, "needs_input", {"method": "elicitation/create", "extra": 1})
    assert client.answer_for(1)["result"]["isError"] is True  # judged against the fetched schema
    client.call(2, "needs_input", {"method": "elicitation/create"})
    assert client.answer_for(2)["result"]["resultType"] == "input_required"
    assert not [m for m in client.skipped if "tools" in m.get("result", {})]
    own = [m["id"] for m in seen_by_server(record) if m.get("method") == "tools/list"]
    assert own and all(str(i).startswith("mcpshield-tools-list-") for i in own)
    assert len(own) == -(-len(TOOLS) // 3)  # every page of the fake server's tools, 3 at a time, once
