"""Asking the client's user in the 2026-07-28 (stateless) protocol era, where a server sends no
requests: an `input_required` result carrying mcpshield's own elicitation, and the client's retry
of the call carrying the answer (the spec's multi round-trip requests, SEP-2322).

Only the wire format and the bookkeeping live here; the Broker decides when to use them.

- **The result** answers the call at once: `{"resultType": "input_required", "inputRequests":
  {KEY: {"method": "elicitation/create", "params": {"mode": "form", "message": …,
  "requestedSchema": …}}}}`. KEY is `mcpshield-approval-` and 32 random hex digits; no
  `requestState` (the spec wants one of the two).
- **The retry** is a new `tools/call` with the same name and arguments and `inputResponses:
  {KEY: {"action": …, "content": {"decision": …}}}`. It counts only while KEY is one mcpshield
  issued (within ANSWER_WINDOW_S), for the same tool and arguments hash, and only once; the
  server never sees mcpshield's keys (they are taken out before the call goes on).
- **The server's own rounds**: when a call mcpshield let run is answered with the server's own
  `input_required`, the retry that carries that answer's `requestState` (or responses to all of
  its `inputRequests`) continues the approved call instead of being asked about again.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

import orjson

from mcpshield.approval import elicit
from mcpshield.approval.granted import Key
from mcpshield.jsonrpc import Message

#: The first protocol version without server requests; results there carry `resultType`.
STATELESS_VERSION: Final = "2026-07-28"
PROTOCOL_META: Final = "io.modelcontextprotocol/protocolVersion"
CAPABILITIES_META: Final = "io.modelcontextprotocol/clientCapabilities"
CLIENT_INFO_META: Final = "io.modelcontextprotocol/clientInfo"
#: How long the client may take to come back with its user's answer: the call already ended, so
#: nothing waits meanwhile; past this the retry is asked about afresh.
ANSWER_WINDOW_S: Final = 600.0
#: Questions and continuations remembered at most: a client that never retries cannot grow them.
MAX_OPEN_ROUNDS: Final = 1000


def stateless(msg: Message) -> bool:
    """True for a request of the 2026-07-28 era or later (its `_meta` names the version)."""
    version = _meta(msg).get(PROTOCOL_META)
    return isinstance(version, str) and version >= STATELESS_VERSION


def client_elicits(msg: Message) -> bool:
    """True if the request's own client capabilities allow a form elicitation."""
    return elicit.supports_form(_meta(msg).get(CAPABILITIES_META))


def client_name(msg: Message) -> str | None:
    info = _meta(msg).get(CLIENT_INFO_META)
    name = info.get("name") if isinstance(info, dict) else None
    return name if isinstance(name, str) else None


@dataclass(frozen=True, slots=True)
class Answered:
    """The client came back: what its user said about mcpshield's question (`verdict`), or that
    this retry continues a call already approved (`verdict` None)."""

    verdict: elicit.Verdict | None
    asked_at: float


class InputRounds:
    """mcpshield's open questions (KEY → call) and the server's open rounds of approved calls."""

    def __init__(self) -> None:
        self._asked: dict[str, tuple[Key, float]] = {}
        self._continuing: dict[tuple[Key, str], float] = {}

    def ask(self, key: Key, text: str) -> dict[str, Any]:
        """The `input_required` result that puts `text` to the client's user about `key`'s call."""
        self._prune()
        own_key = f"{elicit.ID_PREFIX}{uuid.uuid4().hex}"
        self._asked[own_key] = (key, time.monotonic())
        params = {"mode": "form", "message": text, "requestedSchema": elicit.SCHEMA}
        return {
            "resultType": "input_required",
            "inputRequests": {own_key: {"method": "elicitation/create", "params": params}},
        }

    def retry(self, msg: Message, key: Key) -> tuple[Message, Answered | None]:
        """A stateless call as the server may see it (mcpshield's keys taken out), and what the
        client answered mcpshield, if this is a retry it may take as an answer."""
        params = msg.params
        responses = params.get("inputResponses")
        answered = None
        if isinstance(responses, dict):
            ours = [name for name in responses if isinstance(name, str) and name.startswith(elicit.ID_PREFIX)]
            for name in ours:
                asked = self._asked.get(name)
                if answered is None and asked is not None and asked[0] == key and _fresh(asked[1]):
                    del self._asked[name]
                    answered = Answered(elicit.verdict(responses[name]), asked[1])
            if ours:
                msg = _without(msg, ours)
        if answered is None:
            token = _round_token(msg.params.get("requestState"), msg.params.get("inputResponses"))
            started = self._continuing.pop((key, token), None) if token is not None else None
            if started is not None and _fresh(started):
                answered = Answered(None, started)
        return msg, answered

    def server_asked(self, key: Key, result: object) -> None:
        """The server answered an approved call with its own `input_required`: the client's
        retry carrying that round's state continues the call."""
        if not isinstance(result, dict) or result.get("resultType") != "input_required":
            return
        requests = result.get("inputRequests")
        names = list(requests) if isinstance(requests, dict) else []
        token = _round_token(result.get("requestState"), dict.fromkeys(names))
        if token is not None:
            self._prune()
            self._continuing[(key, token)] = time.monotonic()

    def _prune(self) -> None:
        for name in [name for name, (_key, since) in self._asked.items() if not _fresh(since)]:
            del self._asked[name]
        for pair in [pair for pair, since in self._continuing.items() if not _fresh(since)]:
            del self._continuing[pair]
        while len(self._asked) >= MAX_OPEN_ROUNDS:  # the oldest first
            del self._asked[next(iter(self._asked))]
        while len(self._continuing) >= MAX_OPEN_ROUNDS:
            del self._continuing[next(iter(self._continuing))]


def _fresh(since: float) -> bool:
    return time.monotonic() - since < ANSWER_WINDOW_S


def _round_token(state: object, responses: object) -> str | None:
    """What ties a retry to one round of the server's: its requestState, else the names of the
    input requests it answers."""
    if isinstance(state, str):
        return f"state:{state}"
    if isinstance(responses, dict) and responses:
        return "keys:" + "\n".join(sorted(str(name) for name in responses))
    return None


def _without(msg: Message, names: list[str]) -> Message:
    """The call with mcpshield's input responses taken out (and `inputResponses` itself when
    nothing else is left)."""
    params = dict(msg.params)
    responses = {name: value for name, value in params["inputResponses"].items() if name not in names}
    if responses:
        params["inputResponses"] = responses
    else:
        del params["inputResponses"]
    body = {**msg.body, "params": params}
    try:
        raw = orjson.dumps(body)
    except TypeError:  # integers beyond 64 bits, from the fallback parser: the stdlib writes them
        raw = json.dumps(body, separators=(",", ":")).encode()
    return Message(msg.kind, raw, body, msg.id, msg.method)


def _meta(msg: Message) -> dict[str, Any]:
    meta = msg.params.get("_meta")
    return meta if isinstance(meta, dict) else {}
