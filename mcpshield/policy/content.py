"""Rewriting answers: lists with entries removed, and resources a profile denies withheld where
a tool, prompt or resources/read result embeds or links them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from mcpshield.jsonrpc import Message
from mcpshield.policy.decision import ALLOW, Decision, Rewrite


def replace_list(msg: Message, key: str, items: list[Any], kept: list[Any]) -> Decision:
    """The message with `result[key]` cut down to `kept`; the original bytes when nothing went."""
    if len(kept) == len(items):
        return ALLOW
    body = dict(msg.body)
    body["result"] = {**body["result"], key: kept}
    return Rewrite(body, key)


def withhold_contents(result: dict[str, Any], allowed: Callable[[str], bool]) -> dict[str, Any] | None:
    """A resources/read result with every content item whose URI is not allowed replaced by a
    note (a server may answer one URI with the contents of others); None if nothing changed."""
    contents = result.get("contents")
    if type(contents) is not list:
        return None
    out: list[Any] | None = None
    for index, item in enumerate(contents):
        uri = item.get("uri") if type(item) is dict else None
        if type(uri) is str and allowed(uri):
            continue
        if out is None:
            out = list(contents)
        shown = uri[:200] if type(uri) is str else "(no readable URI)"
        out[index] = {"uri": shown, "mimeType": "text/plain", "text": _note(shown)}
    return None if out is None else {**result, "contents": out}


def _note(uri: str) -> str:
    return f"[mcpshield withheld the resource {uri}: the profile denies it]"


#: Content item types that carry a resource: embedded (with its text or blob) or linked.
_RESOURCE_ITEMS: Final = ("resource", "resource_link")


def withhold_resources(result: dict[str, Any], allowed: Callable[[str], bool]) -> dict[str, Any] | None:
    """`result` with every denied resource item replaced by a note, or None if nothing changed.

    Looks in a tool result's `content` and a prompt result's `messages[].content` (one item or a
    list of them). An item whose URI cannot be read is withheld too."""
    changed = False
    content = result.get("content")
    if type(content) is list:
        kept = _items(content, allowed)
        if kept is not None:
            result = {**result, "content": kept}
            changed = True
    messages = result.get("messages")
    if type(messages) is list:
        rewritten = [_message(m, allowed) for m in messages]
        if any(new is not None for new in rewritten):
            kept_messages = [new if new is not None else old for old, new in zip(messages, rewritten, strict=True)]
            result = {**result, "messages": kept_messages}
            changed = True
    return result if changed else None


def _message(message: Any, allowed: Callable[[str], bool]) -> dict[str, Any] | None:
    if type(message) is not dict:
        return None
    content = message.get("content")
    if type(content) is dict:
        kept = _items([content], allowed)
        return None if kept is None else {**message, "content": kept[0]}
    if type(content) is list:
        kept = _items(content, allowed)
        return None if kept is None else {**message, "content": kept}
    return None


def _items(items: list[Any], allowed: Callable[[str], bool]) -> list[Any] | None:
    out: list[Any] | None = None
    for index, item in enumerate(items):
        is_resource, uri = _resource_uri(item)
        if not is_resource or (uri is not None and allowed(uri)):
            continue
        if out is None:
            out = list(items)
        shown = uri[:200] if uri is not None else "(no readable URI)"
        out[index] = {"type": "text", "text": _note(shown)}
    return out


def _resource_uri(item: Any) -> tuple[bool, str | None]:
    """Whether the item carries a resource, and its URI (None when it has none readable)."""
    if type(item) is not dict or item.get("type") not in _RESOURCE_ITEMS:
        return False, None
    holder = item.get("resource") if item.get("type") == "resource" else item
    uri = holder.get("uri") if type(holder) is dict else None
    return True, uri if type(uri) is str else None
