"""The profile policy: what a profile allows, enforced on every message in both directions.

Each message is routed by direction, kind and method to one handler; anything no handler
claims passes. The policy keeps one session's state: the input schemas the server declared
(from its tools/list answers) and the rate-limit windows. The judgement itself is delegated to
pure judges (`policy.tools`, `policy.args`, `policy.schema`, `policy.limits`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from mcpshield import jsonrpc
from mcpshield.errors import ProfileError
from mcpshield.jsonrpc import REQUEST, RESPONSE, Message
from mcpshield.policy.content import withhold_resources
from mcpshield.policy.decision import ALLOW, Allow, Ask, Context, Decision, Deny, Direction, Rewrite
from mcpshield.policy.limits import RateLimiter
from mcpshield.policy.roots import RootsFilter
from mcpshield.policy.tools import ALLOW as ALLOW_ACTION
from mcpshield.policy.tools import ASK, DENY, NamedJudge, ToolJudge, Verdict
from mcpshield.profile.model import STRICTNESS, Action, LoadedProfile, NamedSection, Profile

#: The JSON-RPC code of a resource nobody may read (the spec's "resource not found").
RESOURCE_NOT_FOUND: Final = -32002
#: Tools whose schema is remembered; a server declaring more is misbehaving.
MAX_TOOLS: Final = 4096
#: Server-to-client requests by method, and the profile field that governs each.
SERVER_REQUESTS: Final = {
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
    "roots/list": "roots",
}
_TO_SERVER: Final = Direction.TO_SERVER
_INPUT_REQUIRED: Final = "input_required"

if TYPE_CHECKING:
    from mcpshield.policy.schema import SchemaProblem, ToolSchema

Handler = Callable[[Message, Context], Decision]


class ProfilePolicy:
    """Enforces a loaded profile, letting every profile it extends veto what that one denies."""

    def __init__(self, loaded: LoadedProfile, resolve: Callable[[str], str] | None = None) -> None:
        self.loaded = loaded
        chain = loaded.chain
        self._profiles = chain
        self._tools = tuple(ToolJudge(p, resolve) for p in chain)
        self._resources = tuple(NamedJudge(p.resources, "resources") for p in chain)
        self._resources_restricted = any(p.resources != NamedSection() for p in chain)
        self._prompts = tuple(NamedJudge(p.prompts, "prompts") for p in chain)
        self._limiters = tuple(RateLimiter(p.limits) for p in chain)
        self._roots = RootsFilter(tuple(p.server_requests.roots_within for p in chain), resolve)
        self._strict = any(p.tools.strict_args for p in chain)
        self._schemas: dict[str, ToolSchema | SchemaProblem] = {}
        self._listed = False  # a tools/list answer arrived since the last list_changed
        self._requests: dict[str, Handler] = {
            "tools/call": self._tool_call,
            "resources/read": self._resource_read,
            "resources/subscribe": self._resource_read,
            "prompts/get": self._prompt_get,
            "completion/complete": self._completion,
            "initialize": self._initialize,
        }
        self._results: dict[str, Handler] = {
            "tools/list": self._tools_listed,
            "resources/list": self._resources_listed,
            "prompts/list": self._prompts_listed,
            "resources/templates/list": self._templates_listed,
            "tools/call": self._call_result,
            "resources/read": self._input_required,
            "prompts/get": self._call_result,
        }

    def check(self, msg: Message, ctx: Context) -> Decision:
        kind = msg.kind
        if ctx.direction is _TO_SERVER:
            if kind is REQUEST:
                handler = self._requests.get(msg.method)  # type: ignore[arg-type]
                return handler(msg, ctx) if handler is not None else ALLOW
            if kind is RESPONSE and ctx.request is not None and ctx.request.method == "roots/list":
                return self._roots_answered(msg)
            return ALLOW
        if kind is RESPONSE:
            if ctx.request is None or "result" not in msg.body:
                return ALLOW
            handler = self._results.get(ctx.request.method)
            return handler(msg, ctx) if handler is not None else ALLOW
        if kind is REQUEST and msg.method in SERVER_REQUESTS:
            return self._server_request(msg)
        if msg.method == "notifications/tools/list_changed":
            self._listed = False
        elif msg.method == "notifications/resources/updated":
            return self._resource_updated(msg)
        return ALLOW

    def catalog_needed(self, msg: Message) -> bool:
        """A visible tool with no known schema, and no tool list seen since it last changed."""
        tool = msg.params.get("name")
        return (
            not self._listed
            and type(tool) is str
            and tool not in self._schemas
            and all(judge.visible(tool) for judge in self._tools)
        )

    # -- the client's requests ----------------------------------------------------------

    def _tool_call(self, msg: Message, ctx: Context) -> Decision:
        params = msg.params
        tool = params.get("name")
        if type(tool) is not str:
            return Deny("tools/call needs the tool's name as a string", jsonrpc.INVALID_PARAMS)
        if not all(judge.visible(tool) for judge in self._tools):
            return Deny(f"Unknown tool: {tool}", jsonrpc.INVALID_PARAMS, "tools.hidden")
        arguments = params.get("arguments", {})
        if type(arguments) is not dict:
            return Deny(f"mcpshield refused this call: the arguments of {tool} must be an object", None)
        verdict = self._tool_verdict(tool, arguments)
        if verdict.action == DENY:
            return Deny(f"mcpshield refused this call: {verdict.why}", None, verdict.rule)
        problem = self._schema_problem(tool, arguments)
        if problem is not None:
            return Deny(f"mcpshield refused this call: {problem}", None, "schema")
        over = self._over_limit(tool, ctx)
        if over is not None:
            return Deny(f"mcpshield refused this call: {over}", None, "limits")
        if verdict.action == ASK:
            return Ask(f"call {tool}", verdict.rule)
        trimmed = self._trim_input_responses(msg)
        return Allow(verdict.rule) if trimmed is None else Rewrite(trimmed, verdict.rule)

    def _trim_input_responses(self, msg: Message) -> dict[str, Any] | None:
        """2026-07-28: a retried call carries the client's answers; roots in them are trimmed."""
        responses = msg.params.get("inputResponses")
        if type(responses) is not dict or not self._roots.active:
            return None
        changed = {}
        for key, response in responses.items():
            roots = response.get("roots") if type(response) is dict else None
            if type(roots) is list:
                kept = [root for root in roots if self._roots.keeps(root)]
                if len(kept) != len(roots):
                    changed[key] = {**response, "roots": kept}
        if not changed:
            return None
        body = _copy_params(msg.body)
        body["params"]["inputResponses"] = {**responses, **changed}
        return body

    def _tool_verdict(self, tool: str, arguments: dict[str, Any]) -> Verdict:
        """The extended profile decides; a base it extends may only make that stricter by denying."""
        verdict = self._tools[-1].decide(tool, arguments)
        if verdict.action != DENY:
            for judge in self._tools[:-1]:
                base = judge.decide(tool, arguments)
                if base.action == DENY:
                    return Verdict(DENY, f"base:{base.rule}", base.why)
        return verdict

    def _schema_problem(self, tool: str, arguments: dict[str, Any]) -> str | None:
        schema = self._schemas.get(tool)
        if schema is None:
            return (
                f"the server's tool list does not declare {tool}, so mcpshield cannot check its arguments; "
                "list the tools (tools/list) to see which exist"
            )
        return schema.validate(arguments, self._strict)

    def _over_limit(self, tool: str, ctx: Context) -> str | None:
        entry = ctx.request
        others = max(ctx.active_calls - 1, 0)  # this call is already in the ledger
        args_key = (lambda: entry.args_hash or "") if entry is not None else (lambda: "")
        for limiter in self._limiters:
            over = limiter.check(tool, args_key, ctx.now, others)
            if over is not None:
                return over
        return None

    def _resource_read(self, msg: Message, ctx: Context) -> Decision:
        uri = msg.params.get("uri")
        if type(uri) is not str:
            return ALLOW  # malformed: the server answers it; nothing is read
        return _named(self._resources, uri, lambda: Deny(f"Resource not found: {uri}", RESOURCE_NOT_FOUND))

    def _prompt_get(self, msg: Message, ctx: Context) -> Decision:
        name = msg.params.get("name")
        return self._prompt_get_named(name) if type(name) is str else ALLOW

    def _prompt_get_named(self, name: str) -> Decision:
        return _named(self._prompts, name, lambda: Deny(f"Unknown prompt: {name}", jsonrpc.INVALID_PARAMS))

    def _completion(self, msg: Message, ctx: Context) -> Decision:
        """Completing an argument of a prompt or resource the profile denies would reveal it."""
        ref = msg.params.get("ref")
        if type(ref) is not dict:
            return ALLOW
        if ref.get("type") == "ref/prompt" and type(ref.get("name")) is str:
            return self._prompt_get_named(ref["name"])
        if ref.get("type") == "ref/resource" and type(ref.get("uri")) is str:
            uri = ref["uri"]
            return _named(self._resources, uri, lambda: Deny(f"Resource not found: {uri}", RESOURCE_NOT_FOUND))
        return ALLOW

    def _resource_updated(self, msg: Message) -> Decision:
        """News of a resource the client may not see is dropped (a notification gets no answer)."""
        uri = msg.params.get("uri")
        if type(uri) is str and not all(judge.visible(uri) for judge in self._resources):
            return Deny(f"update of a hidden resource {uri}", None, "resources")
        return ALLOW

    def _initialize(self, msg: Message, ctx: Context) -> Decision:
        """Tells the server up front which client features the profile denies it."""
        capabilities = msg.params.get("capabilities")
        if type(capabilities) is not dict:
            return ALLOW
        denied = [name for name in ("sampling", "elicitation", "roots") if name in capabilities and self._denies(name)]
        if not denied:
            return ALLOW
        body = _copy_params(msg.body)
        body["params"]["capabilities"] = {k: v for k, v in capabilities.items() if k not in denied}
        return Rewrite(body, "server_requests")

    # -- the server's requests and answers ----------------------------------------------

    def _feature(self, name: str) -> Action:
        """The strictest action the chain gives a client feature the server asks for."""
        actions: list[Action] = [getattr(p.server_requests, name) for p in self._profiles]
        return max(actions, key=STRICTNESS.__getitem__)

    def _denies(self, name: str) -> bool:
        return self._feature(name) == DENY

    def _server_request(self, msg: Message) -> Decision:
        name = SERVER_REQUESTS[msg.method]  # type: ignore[index]
        action = self._feature(name)
        if action == DENY:
            return Deny(f"the profile does not let this server use {name}", jsonrpc.METHOD_NOT_FOUND, "server_requests")
        if action == ASK:
            return Ask(f"the server asks for {name}", "server_requests")
        return ALLOW

    def _call_result(self, msg: Message, ctx: Context) -> Decision:
        """A tool or prompt result: its input requests policed, denied resources in it withheld."""
        decision = self._input_required(msg, ctx)
        if decision is not ALLOW or not self._resources_restricted or type(msg.body["result"]) is not dict:
            return decision
        result = withhold_resources(msg.body["result"], self._resource_allowed)
        return ALLOW if result is None else Rewrite({**msg.body, "result": result}, "resources")

    def _resource_allowed(self, uri: str) -> bool:
        return all(judge.decide(uri).action == ALLOW_ACTION for judge in self._resources)

    def _input_required(self, msg: Message, ctx: Context) -> Decision:
        """2026-07-28: a result asking the client for input is policed like the requests it replaces."""
        result = msg.body["result"]
        if type(result) is not dict or result.get("resultType") != _INPUT_REQUIRED:
            return ALLOW
        requests = result.get("inputRequests")
        if type(requests) is not dict:
            return ALLOW
        for request in requests.values():
            method = request.get("method") if type(request) is dict else None
            name = SERVER_REQUESTS.get(method) if type(method) is str else None
            if name is None:
                return _refuse_result(msg, ctx, "the server asked the client for something mcpshield cannot check")
            action = self._feature(name)
            if action != ALLOW_ACTION:
                why = "the profile does not let this server use" if action == DENY else "no approver can allow"
                return _refuse_result(msg, ctx, f"{why} {name}")
        return ALLOW

    def _tools_listed(self, msg: Message, ctx: Context) -> Decision:
        tools = msg.body["result"].get("tools") if type(msg.body["result"]) is dict else None
        if type(tools) is not list:
            return ALLOW
        self._listed = True
        kept = []
        for tool in tools:
            name = tool.get("name") if type(tool) is dict else None
            if type(name) is not str or not all(judge.visible(name) for judge in self._tools):
                continue
            if len(self._schemas) < MAX_TOOLS or name in self._schemas:
                self._schemas[name] = _compile_schema(tool.get("inputSchema"))
            kept.append(tool)
        return _replace_list(msg, "tools", tools, kept)

    def _resources_listed(self, msg: Message, ctx: Context) -> Decision:
        return _filter_list(msg, "resources", "uri", self._resources)

    def _prompts_listed(self, msg: Message, ctx: Context) -> Decision:
        return _filter_list(msg, "prompts", "name", self._prompts)

    def _templates_listed(self, msg: Message, ctx: Context) -> Decision:
        """Templates are judged by their text: `fake://secret/*` hides `fake://secret/{id}`."""
        return _filter_list(msg, "resourceTemplates", "uriTemplate", self._resources)

    def _roots_answered(self, msg: Message) -> Decision:
        result = msg.body.get("result")
        roots = result.get("roots") if type(result) is dict else None
        if type(roots) is not list or not self._roots.active:
            return ALLOW
        kept = [root for root in roots if self._roots.keeps(root)]
        return _replace_list(msg, "roots", roots, kept)


def _compile_schema(schema: object) -> ToolSchema | SchemaProblem:
    """Imports jsonschema on first use: it costs ~35 ms, kept off the way to the first answer."""
    from mcpshield.policy.schema import compile_tool_schema

    return compile_tool_schema(schema)


def _named(judges: tuple[NamedJudge, ...], name: str, refuse: Callable[[], Deny]) -> Decision:
    verdicts = [judge.decide(name) for judge in judges]
    worst = max(verdicts, key=lambda v: STRICTNESS[v.action])
    if worst.action == DENY:
        denied = refuse()
        return Deny(denied.reason, denied.code, worst.rule)
    if worst.action == ASK:
        return Ask(f"open {name}", worst.rule)
    return Allow(verdicts[-1].rule)


def _filter_list(msg: Message, key: str, field: str, judges: tuple[NamedJudge, ...]) -> Decision:
    result = msg.body["result"]
    items = result.get(key) if type(result) is dict else None
    if type(items) is not list:
        return ALLOW
    kept = [
        item
        for item in items
        if type(item) is dict and type(item.get(field)) is str and all(judge.visible(item[field]) for judge in judges)
    ]
    return _replace_list(msg, key, items, kept)


def _replace_list(msg: Message, key: str, items: list[Any], kept: list[Any]) -> Decision:
    if len(kept) == len(items):
        return ALLOW
    body = dict(msg.body)
    body["result"] = {**body["result"], key: kept}
    return Rewrite(body, key)


def _copy_params(body: dict[str, Any]) -> dict[str, Any]:
    copy = dict(body)
    copy["params"] = dict(body["params"])
    return copy


def _refuse_result(msg: Message, ctx: Context, reason: str) -> Decision:
    """Replaces an input-required result with a refusal its requester can act on."""
    text = f"mcpshield refused the server's request for input: {reason}"
    method = ctx.request.method if ctx.request is not None else None
    if method == "tools/call":
        result = {"content": [{"type": "text", "text": text}], "isError": True, "resultType": "complete"}
        return Rewrite({"jsonrpc": "2.0", "id": msg.id, "result": result}, "server_requests")
    error = {"code": jsonrpc.INVALID_REQUEST, "message": text}
    return Rewrite({"jsonrpc": "2.0", "id": msg.id, "error": error}, "server_requests")


def build_policy(loaded: LoadedProfile) -> ProfilePolicy:
    """The policy a loaded profile asks for; a condition that cannot be compiled (a root that is
    not a path, a host glob that is not a host) is the profile's error, named as such."""
    try:
        return ProfilePolicy(loaded)
    except ValueError as exc:
        raise ProfileError(
            f"{loaded.source}: {exc}", "fix the [[rules]] condition, then run mcpshield profile check"
        ) from None


def single(profile: Profile, name: str = "test") -> LoadedProfile:
    """A profile on its own, with no base: for tests and `profile check`."""
    return LoadedProfile(name, "<memory>", (profile,))
