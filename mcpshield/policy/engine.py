"""The profile policy: what a profile allows, enforced on every message in both directions.

Each message is routed by direction, kind and method to one handler; anything no handler
claims passes. The policy keeps one session's state: the input schemas the server declared
(from its tools/list answers) and the rate-limit windows. The judgement itself is delegated to
pure judges (`policy.tools`, `policy.args`, `policy.schema`, `policy.limits`) and, for
resources and prompts, `policy.resources`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from mcpshield import jsonrpc
from mcpshield.errors import ProfileError
from mcpshield.jsonrpc import NOTIFICATION, REQUEST, RESPONSE, Message
from mcpshield.policy.content import replace_list
from mcpshield.policy.decision import ALLOW, Allow, Ask, Context, Decision, Deny, Direction, Rewrite
from mcpshield.policy.limits import RateLimiter
from mcpshield.policy.resources import ResourcesAndPrompts
from mcpshield.policy.roots import RootsFilter
from mcpshield.policy.tools import ALLOW as ALLOW_ACTION
from mcpshield.policy.tools import ASK, DENY, ToolJudge, Verdict
from mcpshield.profile.model import STRICTNESS, Action, LoadedProfile, Profile

#: The error a 2025-11-25 server answers with to send the user to a URL (URL-mode elicitation).
URL_ELICITATION_REQUIRED: Final = -32042
#: Tools whose schema is remembered; a server declaring more is misbehaving.
MAX_TOOLS: Final = 4096
#: Server-to-client requests by method, and the profile field that governs each.
SERVER_REQUESTS: Final = {
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
    "roots/list": "roots",
}
#: Methods that are requests in either direction; sent as a notification, they are dropped.
REQUEST_METHODS: Final = frozenset(
    {"initialize", "ping", "tools/call", "tools/list", "resources/read", "resources/list"}
    | {"resources/subscribe", "resources/unsubscribe", "resources/templates/list", "prompts/get"}
    | {"prompts/list", "completion/complete", "logging/setLevel", "tasks/get", "tasks/result"}
    | {"tasks/list", "tasks/cancel", "server/discover", *SERVER_REQUESTS}
)
_TO_SERVER: Final = Direction.TO_SERVER
_INPUT_REQUIRED: Final = "input_required"

if TYPE_CHECKING:
    from mcpshield.policy.schema import SchemaProblem, ToolSchema

Handler = Callable[[Message, Context], Decision]


class ProfilePolicy:
    """Enforces a loaded profile; every profile it extends is consulted too, and the strictest
    answer wins (what a base denies stays denied, what it asks about is still asked)."""

    def __init__(self, loaded: LoadedProfile, resolve: Callable[[str], str] | None = None) -> None:
        self.loaded = loaded
        chain = loaded.chain
        self._profiles = chain
        self._tools = tuple(ToolJudge(p, resolve) for p in chain)
        self._content = ResourcesAndPrompts(chain)
        self._limiters = tuple(RateLimiter(p.limits) for p in chain)
        self._roots = RootsFilter(tuple(p.server_requests.roots_within for p in chain), resolve)
        self._strict = any(p.tools.strict_args for p in chain)
        self._schemas: dict[str, ToolSchema | SchemaProblem] = {}
        self._listed = False  # the whole tool list arrived since the last list_changed
        content = self._content
        self._requests: dict[str, Handler] = {
            "tools/call": self._tool_call,
            "resources/read": lambda msg, ctx: self._retry(msg, content.read(msg)),
            "resources/subscribe": lambda msg, ctx: content.read(msg),
            "prompts/get": lambda msg, ctx: self._retry(msg, content.prompt(msg)),
            "completion/complete": lambda msg, ctx: content.completion(msg),
            "initialize": self._initialize,
        }
        self._results: dict[str, Handler] = {
            "tools/list": self._tools_listed,
            "resources/list": lambda msg, ctx: content.resources_listed(msg),
            "prompts/list": lambda msg, ctx: content.prompts_listed(msg),
            "resources/templates/list": lambda msg, ctx: content.templates_listed(msg),
            "tools/call": self._call_result,
            "resources/read": self._call_result,
            "prompts/get": self._call_result,
            "tasks/result": self._call_result,
        }

    def check(self, msg: Message, ctx: Context) -> Decision:
        kind = msg.kind
        if kind is NOTIFICATION:
            return self._notification(msg)
        if ctx.direction is _TO_SERVER:
            if kind is REQUEST:
                handler = self._requests.get(msg.method)  # type: ignore[arg-type]
                return handler(msg, ctx) if handler is not None else ALLOW
            if ctx.request is not None and ctx.request.method == "roots/list":
                return self._roots_answered(msg)
            return ALLOW
        if kind is RESPONSE:
            if ctx.request is None:
                return ALLOW
            if "result" not in msg.body:
                return self._error_answer(msg)
            handler = self._results.get(ctx.request.method)
            return handler(msg, ctx) if handler is not None else ALLOW
        if msg.method in SERVER_REQUESTS:
            return self._server_request(msg)
        return ALLOW

    def _notification(self, msg: Message) -> Decision:
        method = msg.method
        if method in REQUEST_METHODS:
            # A request without an id gets no answer and is easily taken for a no-op: a server
            # that runs it anyway would have run an unchecked call.
            return Deny(f"{method} sent as a notification", None, "notifications")
        if method == "notifications/tools/list_changed":
            self._listed = False
        elif method == "notifications/resources/updated":
            return self._content.updated(msg)
        return ALLOW

    def catalog_needed(self, msg: Message) -> bool:
        """A visible tool with no known schema, and no whole tool list seen since it last changed."""
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
        if verdict.action == ASK:  # limits apply once a person has said yes (`approved`), not to a question
            return Ask(f"call {tool}", verdict.rule)
        return self._limited(msg, tool, ctx, Allow(verdict.rule))

    def approved(self, msg: Message, ctx: Context) -> Decision:
        """An approved tool call still counts against the limits, and its 2026-07-28 roots are
        trimmed, as an allowed one's are."""
        tool = msg.params.get("name")
        if msg.method != "tools/call" or type(tool) is not str:
            return ALLOW
        return self._limited(msg, tool, ctx, ALLOW)

    def _limited(self, msg: Message, tool: str, ctx: Context, allowed: Allow) -> Decision:
        over = self._over_limit(tool, ctx)
        if over is not None:
            return Deny(f"mcpshield refused this call: {over}", None, "limits")
        return self._retry(msg, allowed)

    def _retry(self, msg: Message, decision: Decision) -> Decision:
        """2026-07-28: a retried request carries the client's answers; roots in them are trimmed."""
        if type(decision) is not Allow or not self._roots.active:
            return decision
        responses = msg.params.get("inputResponses")
        if type(responses) is not dict:
            return decision
        changed = {}
        for key, response in responses.items():
            roots = response.get("roots") if type(response) is dict else None
            if type(roots) is list:
                kept = [root for root in roots if self._roots.keeps(root)]
                if len(kept) != len(roots):
                    changed[key] = {**response, "roots": kept}
        if not changed:
            return decision
        body = _copy_params(msg.body)
        body["params"]["inputResponses"] = {**responses, **changed}
        return Rewrite(body, decision.rule)

    def _tool_verdict(self, tool: str, arguments: dict[str, Any]) -> Verdict:
        """The extended profile decides; each base it extends may only make that stricter."""
        verdict = self._tools[-1].decide(tool, arguments)
        for judge in self._tools[:-1]:
            base = judge.decide(tool, arguments)
            if STRICTNESS[base.action] > STRICTNESS[verdict.action]:
                verdict = Verdict(base.action, f"base:{base.rule}", base.why)
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

    def _error_answer(self, msg: Message) -> Decision:
        """-32042 carries URL-mode elicitations (2025-11-25): policed like elicitation/create."""
        error = msg.body.get("error")
        if type(error) is not dict or error.get("code") != URL_ELICITATION_REQUIRED:
            return ALLOW
        if self._feature("elicitation") == ALLOW_ACTION:
            return ALLOW
        text = (
            "mcpshield refused the server's request to send the user to a URL: the profile does not allow elicitation"
        )
        return Rewrite({"jsonrpc": "2.0", "id": msg.id, "error": {"code": jsonrpc.SERVER_ERROR, "message": text}})

    def _call_result(self, msg: Message, ctx: Context) -> Decision:
        """A tool, prompt or resource result: its input requests policed, and the resources
        in it that the profile does not allow withheld."""
        decision = self._input_required(msg, ctx)
        result = msg.body["result"]
        if decision is not ALLOW or type(result) is not dict:
            return decision
        withheld = self._content.withheld(result)
        return ALLOW if withheld is None else Rewrite({**msg.body, "result": withheld}, "resources")

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
        result = msg.body["result"]
        tools = result.get("tools") if type(result) is dict else None
        if type(tools) is not list:
            return ALLOW
        if type(result.get("nextCursor")) is not str:
            self._listed = True  # the last page: the whole list has been seen
        kept = []
        for tool in tools:
            name = tool.get("name") if type(tool) is dict else None
            if type(name) is not str or not all(judge.visible(name) for judge in self._tools):
                continue
            if len(self._schemas) < MAX_TOOLS or name in self._schemas:
                self._schemas[name] = _compile_schema(tool.get("inputSchema"))
            kept.append(tool)
        return replace_list(msg, "tools", tools, kept)

    def _roots_answered(self, msg: Message) -> Decision:
        result = msg.body.get("result")
        roots = result.get("roots") if type(result) is dict else None
        if type(roots) is not list or not self._roots.active:
            return ALLOW
        kept = [root for root in roots if self._roots.keeps(root)]
        return replace_list(msg, "roots", roots, kept)


def _compile_schema(schema: object) -> ToolSchema | SchemaProblem:
    """Imports jsonschema on first use: it costs ~35 ms, kept off the way to the first answer."""
    from mcpshield.policy.schema import compile_tool_schema

    return compile_tool_schema(schema)


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
