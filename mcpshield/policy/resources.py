"""The `[resources]` and `[prompts]` sections: reads, lists, completions and embedded content.

Resource URIs are judged in their normal form (`policy.uris`); a URI that cannot be normalised
is refused. Every profile of an `extends` chain is consulted and the strictest answer wins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from mcpshield import jsonrpc
from mcpshield.jsonrpc import Message
from mcpshield.policy.content import replace_list, withhold_contents, withhold_resources
from mcpshield.policy.decision import ALLOW, Allow, Ask, Decision, Deny
from mcpshield.policy.tools import ALLOW as ALLOW_ACTION
from mcpshield.policy.tools import ASK, DENY, NamedJudge, Verdict
from mcpshield.policy.uris import normalize_uri
from mcpshield.profile.model import STRICTNESS, NamedSection, Profile

#: The JSON-RPC code of a resource nobody may read (the spec's "resource not found").
RESOURCE_NOT_FOUND: Final = -32002
#: What a URI that cannot be read one way only is judged as.
_UNREADABLE: Final = Verdict(DENY, "resources.uri", "mcpshield cannot read that URI one way only")


class ResourcesAndPrompts:
    """One session's judge of resources and prompts for a chain of profiles."""

    def __init__(self, chain: tuple[Profile, ...]) -> None:
        self._resources = tuple(NamedJudge(p.resources, "resources") for p in chain)
        self._prompts = tuple(NamedJudge(p.prompts, "prompts") for p in chain)
        #: Whether any resource can be denied or asked about (else nothing needs scanning).
        self.restricted = any(p.resources != NamedSection() for p in chain)

    # -- verdicts -------------------------------------------------------------------------

    def resource_verdict(self, uri: str) -> Verdict:
        normal = normalize_uri(uri)
        if normal is None:
            return _UNREADABLE
        return _strictest(judge.decide(normal) for judge in self._resources)

    def resource_allowed(self, uri: str) -> bool:
        return self.resource_verdict(uri).action == ALLOW_ACTION

    def _resource_visible(self, uri: str) -> bool:
        return self.resource_verdict(uri).action != DENY

    def _prompt_visible(self, name: str) -> bool:
        return _strictest(judge.decide(name) for judge in self._prompts).action != DENY

    # -- the client's requests ------------------------------------------------------------

    def read(self, msg: Message) -> Decision:
        """resources/read and resources/subscribe."""
        uri = msg.params.get("uri")
        if type(uri) is not str:
            return Deny(f"{msg.method} needs the resource's uri as a string", jsonrpc.INVALID_PARAMS)
        return self._resource_decision(uri)

    def prompt(self, msg: Message) -> Decision:
        name = msg.params.get("name")
        if type(name) is not str:
            return Deny("prompts/get needs the prompt's name as a string", jsonrpc.INVALID_PARAMS)
        return self._prompt_decision(name)

    def completion(self, msg: Message) -> Decision:
        """Completing an argument of a prompt or resource the profile denies would reveal it."""
        ref = msg.params.get("ref")
        kind = ref.get("type") if type(ref) is dict else None
        if kind == "ref/prompt" and type(ref.get("name")) is str:  # type: ignore[union-attr]
            return self._prompt_decision(ref["name"])  # type: ignore[index]
        if kind == "ref/resource" and type(ref.get("uri")) is str:  # type: ignore[union-attr]
            return self._resource_decision(ref["uri"])  # type: ignore[index]
        return Deny("completion/complete needs a ref/prompt name or a ref/resource uri", jsonrpc.INVALID_PARAMS)

    def _resource_decision(self, uri: str) -> Decision:
        verdict = self.resource_verdict(uri)
        if verdict.action == DENY:
            return Deny(f"Resource not found: {uri}", RESOURCE_NOT_FOUND, verdict.rule)
        return Ask(f"open {uri}", verdict.rule) if verdict.action == ASK else Allow(verdict.rule)

    def _prompt_decision(self, name: str) -> Decision:
        verdict = _strictest(judge.decide(name) for judge in self._prompts)
        if verdict.action == DENY:
            return Deny(f"Unknown prompt: {name}", jsonrpc.INVALID_PARAMS, verdict.rule)
        return Ask(f"use the prompt {name}", verdict.rule) if verdict.action == ASK else Allow(verdict.rule)

    # -- the server's answers and notifications -------------------------------------------

    def updated(self, msg: Message) -> Decision:
        """News of a resource the client may not see is dropped (a notification gets no answer)."""
        uri = msg.params.get("uri")
        if type(uri) is not str or not self._resource_visible(uri):
            return Deny("an update of a resource the client may not see", None, "resources")
        return ALLOW

    def resources_listed(self, msg: Message) -> Decision:
        return _filter_list(msg, "resources", "uri", self._resource_visible)

    def templates_listed(self, msg: Message) -> Decision:
        """Templates are judged by their text: `fake://secret/*` hides `fake://secret/{id}`."""
        return _filter_list(msg, "resourceTemplates", "uriTemplate", self._resource_visible)

    def prompts_listed(self, msg: Message) -> Decision:
        return _filter_list(msg, "prompts", "name", self._prompt_visible)

    def withheld(self, result: dict[str, Any]) -> dict[str, Any] | None:
        """A tool, prompt or resources/read result with the resources not allowed outright
        replaced by a note; None when nothing needed withholding."""
        if not self.restricted:
            return None
        changed = withhold_resources(result, self.resource_allowed)
        contents = withhold_contents(changed or result, self.resource_allowed)
        return contents if contents is not None else changed


def _strictest(verdicts: Any) -> Verdict:
    """The strictest verdict; the last (the most extended profile's) among equals."""
    best: Verdict | None = None
    for verdict in verdicts:
        if best is None or STRICTNESS[verdict.action] >= STRICTNESS[best.action]:
            best = verdict
    assert best is not None, "a chain has at least one profile"
    return best


def _filter_list(msg: Message, key: str, field: str, visible: Callable[[str], bool]) -> Decision:
    result = msg.body["result"]
    items = result.get(key) if type(result) is dict else None
    if type(items) is not list:
        return ALLOW
    kept = [item for item in items if type(item) is dict and type(item.get(field)) is str and visible(item[field])]
    return replace_list(msg, key, items, kept)
