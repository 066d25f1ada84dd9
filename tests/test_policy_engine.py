"""Tier 1: the profile policy judged message by message, without processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from mcpshield import jsonrpc
from mcpshield.jsonrpc import Message
from mcpshield.ledger import Ledger
from mcpshield.policy import Allow, Ask, Context, Decision, Deny, Direction, Rewrite
from mcpshield.policy.engine import ProfilePolicy, single
from mcpshield.policy.resources import RESOURCE_NOT_FOUND
from mcpshield.profile.merge import merge
from mcpshield.profile.model import LoadedProfile, Profile

TO_SERVER = Direction.TO_SERVER
TO_CLIENT = Direction.TO_CLIENT
SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}}}
TOOLS = ["read_file", "write_file", "fetch", "delete_file", "echo"]


def profile(**sections: Any) -> Profile:
    return Profile.model_validate(sections)


def decode(body: dict[str, Any]) -> Message:
    msg = jsonrpc.decode(orjson.dumps({"jsonrpc": "2.0", **body}))
    assert isinstance(msg, Message)
    return msg


class Session:
    """A policy with the client's and the server's ledgers, fed messages like the relay does."""

    def __init__(self, loaded: LoadedProfile | Profile) -> None:
        self.policy = ProfilePolicy(loaded if isinstance(loaded, LoadedProfile) else single(loaded))
        self.client = Ledger()
        self.server = Ledger()
        self.now = 1000.0
        self.next_id = 0

    def request(self, method: str, params: dict[str, Any], direction: Direction = TO_SERVER) -> Decision:
        self.next_id += 1
        msg = decode({"id": self.next_id, "method": method, "params": params})
        ledger = self.client if direction is TO_SERVER else self.server
        entry = ledger.open(msg, self.now)
        assert entry is not None
        decision = self.policy.check(msg, Context(self.now, direction, entry, self.client.active_tool_calls))
        if not isinstance(decision, Allow | Rewrite):
            ledger.close(msg.id)  # type: ignore[arg-type]  # refused: the relay closes it
        return decision

    def call(self, tool: str, **arguments: Any) -> Decision:
        return self.request("tools/call", {"name": tool, "arguments": arguments})

    def answer(self, method: str, params: dict[str, Any], result: dict[str, Any]) -> Decision:
        """The client asks `method`; returns the decision on the server's `result`."""
        self.next_id += 1
        request = decode({"id": self.next_id, "method": method, "params": params})
        entry = self.client.open(request, self.now)
        assert entry is not None
        self.client.close(self.next_id)
        response = decode({"id": self.next_id, "result": result})
        return self.policy.check(response, Context(self.now, TO_CLIENT, entry))

    def list_tools(self, names: list[str] = TOOLS, schema: dict[str, Any] = SCHEMA) -> list[str]:
        decision = self.answer("tools/list", {}, {"tools": [{"name": n, "inputSchema": schema} for n in names]})
        if isinstance(decision, Rewrite):
            return [tool["name"] for tool in decision.body["result"]["tools"]]
        assert isinstance(decision, Allow)
        return names

    def client_answers(self, method: str, result: dict[str, Any]) -> Decision:
        """The server asks `method` (allowed through); returns the decision on the client's answer."""
        self.next_id += 1
        request = decode({"id": f"s{self.next_id}", "method": method, "params": {}})
        entry = self.server.open(request, self.now)
        assert entry is not None
        self.server.close(request.id)  # type: ignore[arg-type]
        response = decode({"id": f"s{self.next_id}", "result": result})
        return self.policy.check(response, Context(self.now, TO_SERVER, entry))


FS = profile(
    server={"name": "fs"},
    tools={"default": "deny", "allow": ["read_*"], "ask": ["write_file"], "deny": ["delete_*"]},
)


def test_tools_list_keeps_only_tools_the_profile_could_let_run() -> None:
    assert Session(FS).list_tools() == ["read_file", "write_file"]


def test_tools_list_keeps_everything_under_a_default_that_is_not_deny() -> None:
    session = Session(profile(tools={"default": "ask", "deny": ["fetch"]}))
    assert session.list_tools() == ["read_file", "write_file", "delete_file", "echo"]


def test_a_hidden_tool_is_unknown_to_the_client() -> None:
    session = Session(FS)
    session.list_tools()
    decision = session.call("fetch", path="x")
    assert isinstance(decision, Deny)
    assert (decision.code, decision.reason) == (jsonrpc.INVALID_PARAMS, "Unknown tool: fetch")


def test_deny_wins_over_allow_and_rules() -> None:
    rules = [{"tool": "delete_file", "action": "allow"}]
    session = Session(profile(tools={"allow": ["*"], "deny": ["delete_*"]}, rules=rules))
    session.list_tools()
    decision = session.call("delete_file", path="/tmp/x")
    assert isinstance(decision, Deny) and decision.code == jsonrpc.INVALID_PARAMS


def test_allowed_and_asked_calls() -> None:
    session = Session(FS)
    session.list_tools()
    assert session.call("read_file", path="/x") == Allow("tools.allow")
    asked = session.call("write_file", path="/x", content="y")
    assert isinstance(asked, Ask) and asked.rule == "tools.ask"


def test_first_matching_rule_decides_and_a_refusal_says_why(tmp_path: Path) -> None:
    public = tmp_path / "public"
    public.mkdir()
    rules = [
        {"tool": "write_file", "action": "allow", "args": {"path": {"within": [str(public)]}}},
        {"tool": "write_file", "action": "ask"},
    ]
    session = Session(profile(tools={"default": "deny", "deny": ["fetch"]}, rules=rules))
    session.list_tools()
    assert session.call("write_file", path=str(public / "a.txt"), content="") == Allow("rules[0]")
    outside = session.call("write_file", path=str(tmp_path / "secret"), content="")
    assert isinstance(outside, Ask) and outside.rule == "rules[1]"


def test_a_call_no_rule_allows_is_a_tool_result_naming_the_condition(tmp_path: Path) -> None:
    rules = [{"tool": "write_file", "action": "allow", "args": {"path": {"within": [str(tmp_path / "public")]}}}]
    session = Session(profile(tools={"default": "deny"}, rules=rules))
    assert session.list_tools() == ["write_file"]
    decision = session.call("write_file", path="/etc/passwd", content="")
    assert isinstance(decision, Deny) and decision.code is None
    assert "/etc/passwd" in decision.reason and str(tmp_path / "public") in decision.reason


def test_a_deny_rule_with_its_reason(tmp_path: Path) -> None:
    rules = [{"tool": "*", "action": "deny", "args": {"path": {"within": ["/etc"]}}, "reason": "not /etc"}]
    session = Session(profile(tools={"default": "allow"}, rules=rules))
    session.list_tools()
    decision = session.call("read_file", path="/etc/passwd")
    assert isinstance(decision, Deny) and decision.code is None and decision.rule == "rules[0]"
    assert decision.reason.endswith("not /etc")
    assert session.call("read_file", path=str(tmp_path)) == Allow("tools.default")


def test_arguments_are_checked_against_the_schema_the_server_declared() -> None:
    session = Session(FS)
    unseen = session.call("read_file", path="/x")
    assert isinstance(unseen, Deny) and "tools/list" in unseen.reason
    session.list_tools()
    wrong_type = session.call("read_file", path=3)
    assert isinstance(wrong_type, Deny) and wrong_type.code is None and wrong_type.rule == "schema"
    extra = session.call("read_file", path="/x", mode="w")
    assert isinstance(extra, Deny) and "mode" in extra.reason


def test_undeclared_arguments_pass_when_strict_args_is_off() -> None:
    session = Session(profile(tools={"allow": ["*"], "strict_args": False}))
    session.list_tools()
    assert session.call("read_file", path="/x", mode="w") == Allow("tools.allow")


def test_a_tool_with_an_unusable_schema_is_refused() -> None:
    session = Session(FS)
    session.list_tools(schema={"type": "object", "properties": {"path": {"$ref": "https://example.com/s.json"}}})
    decision = session.call("read_file", path="/x")
    assert isinstance(decision, Deny) and "schema" in decision.reason


def test_the_overall_rate_limit_refuses_with_a_retry_hint_then_recovers() -> None:
    session = Session(profile(tools={"allow": ["*"]}, limits={"calls_per_minute": 2}))
    session.list_tools()
    assert isinstance(session.call("read_file", path="/a"), Allow)
    assert isinstance(session.call("read_file", path="/b"), Allow)
    over = session.call("read_file", path="/c")
    assert isinstance(over, Deny) and over.code is None and "retry in 60 s" in over.reason
    session.now += 60.5
    assert isinstance(session.call("read_file", path="/c"), Allow)


def test_per_tool_limits_count_only_that_tool() -> None:
    session = Session(profile(tools={"allow": ["*"]}, limits={"tools": {"write_*": 1}}))
    session.list_tools()
    assert isinstance(session.call("write_file", path="/a", content=""), Allow)
    assert isinstance(session.call("write_file", path="/b", content=""), Deny)
    assert isinstance(session.call("read_file", path="/b"), Allow)


def test_the_loop_breaker_stops_identical_calls_only() -> None:
    session = Session(profile(tools={"allow": ["*"]}, limits={"identical_calls_per_minute": 3}))
    session.list_tools()
    for _ in range(3):
        assert isinstance(session.call("read_file", path="/same"), Allow)
    looped = session.call("read_file", path="/same")
    assert isinstance(looped, Deny) and "loop" in looped.reason
    assert isinstance(session.call("read_file", path="/other"), Allow)


def test_concurrent_calls_over_the_limit_are_refused() -> None:
    session = Session(profile(tools={"allow": ["*"]}, limits={"max_concurrent": 2}))
    session.list_tools()
    assert isinstance(session.call("read_file", path="/a"), Allow)
    assert isinstance(session.call("read_file", path="/b"), Allow)
    busy = session.call("read_file", path="/c")
    assert isinstance(busy, Deny) and "already running" in busy.reason
    session.client.close(1 + 1)  # the first call (id 2, after tools/list) is answered
    assert isinstance(session.call("read_file", path="/c"), Allow)


def extended(base: Profile, ext: Profile) -> LoadedProfile:
    """The chain the loader builds for `ext` extending `base`: the base, then ext merged over it."""
    return LoadedProfile("ext", "<memory>", (base, merge(base, ext)))


def test_an_extension_cannot_loosen_what_its_base_denies_or_asks_about() -> None:
    base = profile(tools={"default": "deny", "allow": ["read_*"], "ask": ["write_file"]})
    rules = [{"tool": "write_file", "action": "allow"}]
    ext = profile(tools={"default": "allow", "allow": ["read_*", "write_file"], "ask": []}, rules=rules)
    session = Session(extended(base, ext))
    assert session.list_tools() == ["read_file", "write_file"]
    asked = session.call("write_file", path="/a", content="")
    assert isinstance(asked, Ask) and asked.rule == "base:tools.ask"
    base_hidden = session.call("fetch", url="x")
    assert isinstance(base_hidden, Deny) and base_hidden.code == jsonrpc.INVALID_PARAMS


def test_an_extension_can_tighten_its_base() -> None:
    base = profile(tools={"default": "allow"})
    ext = profile(tools={"ask": ["write_file"], "deny": ["delete_*"]})
    session = Session(extended(base, ext))
    assert session.list_tools() == ["read_file", "write_file", "fetch", "echo"]
    assert isinstance(session.call("write_file", path="/a", content=""), Ask)
    assert isinstance(session.call("read_file", path="/a"), Allow)


def test_request_methods_sent_as_notifications_are_dropped() -> None:
    session = Session(profile(tools={"allow": ["*"]}))
    for method, direction in (("tools/call", TO_SERVER), ("sampling/createMessage", TO_CLIENT)):
        note = decode({"method": method, "params": {"name": "delete_everything"}})
        assert isinstance(session.policy.check(note, Context(session.now, direction)), Deny), method


def test_malformed_resource_and_prompt_requests_are_refused_not_passed() -> None:
    session = Session(profile())
    for method, params in (
        ("resources/read", {"uri": ["fake://x"]}),
        ("resources/subscribe", {}),
        ("prompts/get", {"name": {"n": 1}}),
        ("completion/complete", {"ref": {"type": "ref/prompt"}}),
    ):
        decision = session.request(method, params)
        assert isinstance(decision, Deny) and decision.code == jsonrpc.INVALID_PARAMS, method


@pytest.mark.parametrize(
    "uri",
    [
        "file:///home/u/.ssh/id_rsa",
        "FILE:///home/u/.ssh/id_rsa",
        "file://localhost/home/u/.ssh/id_rsa",
        "file:///home/u/x/../.ssh/id_rsa",
        "file:///home/u/%2essh/id_rsa",
        "file:///../home/u/.ssh/id_rsa",
    ],
)
def test_a_resource_is_judged_by_its_normal_uri(uri: str) -> None:
    session = Session(profile(resources={"deny": ["file:///home/u/.ssh/*"]}))
    decision = session.request("resources/read", {"uri": uri})
    assert isinstance(decision, Deny) and decision.code == RESOURCE_NOT_FOUND


def test_resources_read_answers_carrying_denied_contents_are_withheld() -> None:
    session = Session(profile(resources={"deny": ["fake://secret/*"]}))
    contents = [{"uri": "fake://public/a", "text": "ok"}, {"uri": "fake://secret/k", "text": "hunter2"}]
    decision = session.answer("resources/read", {"uri": "fake://public/a"}, {"contents": contents})
    assert isinstance(decision, Rewrite)
    assert decision.body["result"]["contents"][0] == contents[0]
    assert "hunter2" not in orjson.dumps(decision.body).decode()


def test_a_url_elicitation_error_is_replaced_when_elicitation_is_not_allowed() -> None:
    session = Session(profile(tools={"allow": ["*"]}, server_requests={"elicitation": "deny"}))
    session.next_id += 1
    request = decode({"id": session.next_id, "method": "tools/call", "params": {"name": "echo"}})
    entry = session.client.open(request, session.now)
    url = {"mode": "url", "elicitationId": "e", "url": "https://evil.example/login", "message": "Sign in"}
    error = {"code": -32042, "message": "auth", "data": {"elicitations": [url]}}
    answer = decode({"id": session.next_id, "error": error})
    decision = session.policy.check(answer, Context(session.now, TO_CLIENT, entry))
    assert isinstance(decision, Rewrite) and "evil.example" not in orjson.dumps(decision.body).decode()


def test_the_tool_list_counts_as_seen_only_after_its_last_page() -> None:
    session = Session(profile(tools={"allow": ["*"]}))
    page = {"tools": [{"name": "echo", "inputSchema": {"type": "object"}}], "nextCursor": "2"}
    session.answer("tools/list", {}, page)
    later = decode({"id": 99, "method": "tools/call", "params": {"name": "fetch", "arguments": {}}})
    assert session.policy.catalog_needed(later)
    session.answer("tools/list", {"cursor": "2"}, {"tools": [{"name": "fetch", "inputSchema": {"type": "object"}}]})
    assert not session.policy.catalog_needed(decode({"id": 98, "method": "tools/call", "params": {"name": "x"}}))


def test_calls_refused_for_want_of_an_approver_do_not_use_up_the_rate_limit() -> None:
    session = Session(profile(tools={"allow": ["read_*"], "ask": ["write_file"]}, limits={"calls_per_minute": 1}))
    session.list_tools()
    for _ in range(3):
        assert isinstance(session.call("write_file", path="/a", content=""), Ask)
    assert isinstance(session.call("read_file", path="/a"), Allow)


@pytest.mark.parametrize(
    ("action", "expected"),
    [("allow", Allow), ("ask", Ask), ("deny", Deny)],
)
def test_server_requests_follow_the_profile(action: str, expected: type) -> None:
    session = Session(profile(server_requests={"sampling": action}))
    decision = session.request("sampling/createMessage", {"messages": []}, TO_CLIENT)
    assert isinstance(decision, expected)
    if isinstance(decision, Deny):
        assert decision.code == jsonrpc.METHOD_NOT_FOUND


def test_initialize_hides_the_client_features_the_profile_denies() -> None:
    session = Session(profile(server_requests={"sampling": "deny", "roots": "deny"}))
    capabilities = {"sampling": {}, "elicitation": {}, "roots": {"listChanged": True}}
    decision = session.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": capabilities})
    assert isinstance(decision, Rewrite)
    assert decision.body["params"]["capabilities"] == {"elicitation": {}}
    assert decision.body["params"]["protocolVersion"] == "2025-11-25"


def test_roots_answers_keep_only_roots_inside_the_allowed_directories(tmp_path: Path) -> None:
    inside = tmp_path / "projects" / "a"
    inside.mkdir(parents=True)
    session = Session(profile(server_requests={"roots_within": [str(tmp_path / "projects")]}))
    roots = [{"uri": inside.as_uri(), "name": "a"}, {"uri": "file:///etc", "name": "etc"}, {"name": "no uri"}]
    decision = session.client_answers("roots/list", {"roots": roots})
    assert isinstance(decision, Rewrite)
    assert decision.body["result"]["roots"] == [roots[0]]


def test_an_input_required_result_asking_for_a_denied_feature_becomes_a_refusal() -> None:
    session = Session(profile(tools={"allow": ["*"]}, server_requests={"sampling": "deny"}))
    result = {"resultType": "input_required", "inputRequests": {"k": {"method": "sampling/createMessage"}}}
    decision = session.answer("tools/call", {"name": "echo", "arguments": {}}, result)
    assert isinstance(decision, Rewrite)
    refusal = decision.body["result"]
    assert refusal["isError"] is True and refusal["resultType"] == "complete"
    assert "sampling" in refusal["content"][0]["text"]


def test_an_input_required_result_for_an_allowed_feature_passes() -> None:
    session = Session(profile(tools={"allow": ["*"]}))
    result = {"resultType": "input_required", "inputRequests": {"k": {"method": "elicitation/create"}}}
    assert session.answer("tools/call", {"name": "echo"}, result) is not None
    assert isinstance(session.answer("tools/call", {"name": "echo"}, result), Allow)


def test_roots_inside_a_retried_call_are_trimmed(tmp_path: Path) -> None:
    session = Session(profile(tools={"allow": ["*"]}, server_requests={"roots_within": [str(tmp_path)]}))
    session.list_tools(schema={"type": "object"})
    inside = {"uri": tmp_path.as_uri()}
    params = {"name": "echo", "arguments": {}, "inputResponses": {"k": {"roots": [inside, {"uri": "file:///"}]}}}
    decision = session.request("tools/call", params)
    assert isinstance(decision, Rewrite)
    assert decision.body["params"]["inputResponses"] == {"k": {"roots": [inside]}}


def test_resources_and_prompts_by_pattern() -> None:
    session = Session(profile(resources={"deny": ["fake://secret/*"]}, prompts={"default": "deny", "allow": ["greet"]}))
    listed = session.answer(
        "resources/list", {}, {"resources": [{"uri": "fake://public/a"}, {"uri": "fake://secret/k"}]}
    )
    assert isinstance(listed, Rewrite) and listed.body["result"]["resources"] == [{"uri": "fake://public/a"}]
    denied = session.request("resources/read", {"uri": "fake://secret/k"})
    assert isinstance(denied, Deny) and denied.code == RESOURCE_NOT_FOUND
    assert isinstance(session.request("resources/read", {"uri": "fake://public/a"}), Allow)
    prompts = session.answer("prompts/list", {}, {"prompts": [{"name": "greet"}, {"name": "leak"}]})
    assert isinstance(prompts, Rewrite) and prompts.body["result"]["prompts"] == [{"name": "greet"}]
    leak = session.request("prompts/get", {"name": "leak"})
    assert isinstance(leak, Deny) and leak.code == jsonrpc.INVALID_PARAMS


def test_templates_completions_and_updates_of_hidden_resources_and_prompts_are_refused() -> None:
    session = Session(profile(resources={"deny": ["fake://secret/*"]}, prompts={"deny": ["leak"]}))
    templates = [{"uriTemplate": "fake://public/{name}"}, {"uriTemplate": "fake://secret/{name}"}]
    listed = session.answer("resources/templates/list", {}, {"resourceTemplates": templates})
    assert isinstance(listed, Rewrite) and listed.body["result"]["resourceTemplates"] == templates[:1]
    for ref in ({"type": "ref/prompt", "name": "leak"}, {"type": "ref/resource", "uri": "fake://secret/{name}"}):
        completion = session.request("completion/complete", {"ref": ref, "argument": {"name": "n", "value": ""}})
        assert isinstance(completion, Deny), ref
    allowed = {"ref": {"type": "ref/prompt", "name": "greet"}, "argument": {"name": "n", "value": ""}}
    assert isinstance(session.request("completion/complete", allowed), Allow)
    update = decode({"method": "notifications/resources/updated", "params": {"uri": "fake://secret/k"}})
    assert isinstance(session.policy.check(update, Context(session.now, TO_CLIENT)), Deny)
    update = decode({"method": "notifications/resources/updated", "params": {"uri": "fake://public/k"}})
    assert isinstance(session.policy.check(update, Context(session.now, TO_CLIENT)), Allow)


def test_denied_resources_embedded_or_linked_in_results_are_withheld() -> None:
    session = Session(profile(tools={"allow": ["*"]}, resources={"deny": ["fake://secret/*"]}))
    secret = {"type": "resource", "resource": {"uri": "fake://secret/k", "text": "hunter2"}}
    public = {"type": "resource_link", "uri": "fake://public/a", "name": "a"}
    text = {"type": "text", "text": "hi"}
    decision = session.answer("tools/call", {"name": "echo"}, {"content": [text, secret, public]})
    assert isinstance(decision, Rewrite)
    content = decision.body["result"]["content"]
    assert content[0] == text and content[2] == public
    assert content[1]["type"] == "text" and "fake://secret/k" in content[1]["text"]
    assert "hunter2" not in orjson.dumps(decision.body).decode()
    prompt = {"messages": [{"role": "user", "content": secret}, {"role": "user", "content": text}]}
    withheld = session.answer("prompts/get", {"name": "p"}, prompt)
    assert isinstance(withheld, Rewrite) and "hunter2" not in orjson.dumps(withheld.body).decode()
    assert isinstance(session.answer("tools/call", {"name": "echo"}, {"content": [text, public]}), Allow)


def test_other_messages_pass_untouched() -> None:
    session = Session(FS)
    assert session.request("ping", {}) is not None
    assert isinstance(session.request("ping", {}), Allow)
    assert isinstance(session.request("notifications/message", {}, TO_CLIENT), Allow)


def test_a_list_answer_the_policy_does_not_change_passes_as_bytes() -> None:
    session = Session(profile(tools={"allow": ["*"]}))
    assert isinstance(session.answer("tools/list", {}, {"tools": [{"name": "echo"}]}), Allow)
