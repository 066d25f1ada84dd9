"""Resources a profile denies, withheld where a tool or prompt result embeds or links them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

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
        shown = uri if uri is not None else "(no readable URI)"
        out[index] = {"type": "text", "text": f"[mcpshield withheld the resource {shown[:200]}: the profile denies it]"}
    return out


def _resource_uri(item: Any) -> tuple[bool, str | None]:
    """Whether the item carries a resource, and its URI (None when it has none readable)."""
    if type(item) is not dict or item.get("type") not in _RESOURCE_ITEMS:
        return False, None
    holder = item.get("resource") if item.get("type") == "resource" else item
    uri = holder.get("uri") if type(holder) is dict else None
    return True, uri if type(uri) is str else None
