"""How a profile that `extends` another is combined with it: a pure function of two profiles."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from pydantic import BaseModel

from mcpshield.profile.model import LimitsSection, Profile, ServerSection

_Section = TypeVar("_Section", bound=BaseModel)
_LISTS = ("allow", "ask", "deny")
_LIMIT_NUMBERS = ("calls_per_minute", "max_concurrent", "identical_calls_per_minute")


def merge(base: Profile, ext: Profile) -> Profile:
    """The profile `ext` says when it extends `base` (base already merged with its own bases).

    "Set" means written in ext's file (pydantic's `model_fields_set`), not merely defaulted.

    | key                         | result                                                      |
    | --------------------------- | ----------------------------------------------------------- |
    | server.name, .description   | ext's where set, else base's                                |
    | server.match                | ext's only: matching the base's command is the base's job   |
    | tools.default, .strict_args | ext's where set, else base's                                |
    | tools.allow / ask / deny    | union, base's first, without repeats                        |
    | rules                       | ext's rules first, then base's (the first match decides)    |
    | resources, prompts          | as tools: default ext's where set; lists united             |
    | server_requests.*           | each key ext's where set, else base's                       |
    | limits.* (numbers)          | the smaller where both set one, else whichever set one      |
    | limits.tools                | union of the globs; the smaller number where both have one  |
    | env                         | union; ext's value where both name a variable               |
    | audit.*, approval.*         | each key ext's where set, else base's                       |
    | extends                     | ext's                                                       |

    The policy additionally consults every earlier profile of the chain and keeps the strictest
    answer (what a base denies stays denied, what it asks about is still asked), so a profile can
    narrow its base but never widen it; merge itself does not enforce that.
    """
    return Profile(
        extends=ext.extends,
        server=_server(base.server, ext.server),
        tools=_listed(base.tools, ext.tools),
        rules=ext.rules + base.rules,
        resources=_listed(base.resources, ext.resources),
        prompts=_listed(base.prompts, ext.prompts),
        server_requests=_override(base.server_requests, ext.server_requests),
        limits=_limits(base.limits, ext.limits),
        audit=_override(base.audit, ext.audit),
        approval=_override(base.approval, ext.approval),
        env={**base.env, **ext.env},
    )


def _override(base: _Section, ext: _Section, *, skip: Iterable[str] = ()) -> _Section:
    """base with every key ext set replaced by ext's value."""
    update = {key: getattr(ext, key) for key in ext.model_fields_set if key not in skip}
    return base.model_copy(update=update)


def _union(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*first, *second)))


def _server(base: ServerSection, ext: ServerSection) -> ServerSection:
    return _override(base, ext, skip=("match",)).model_copy(update={"match": ext.match})


def _listed(base: _Section, ext: _Section) -> _Section:
    """[tools], [resources], [prompts]: single keys ext's where set; the allow/ask/deny lists united."""
    merged = _override(base, ext, skip=_LISTS)
    return merged.model_copy(update={key: _union(getattr(base, key), getattr(ext, key)) for key in _LISTS})


def _set_value(section: LimitsSection, key: str) -> int | None:
    value: int | None = getattr(section, key) if key in section.model_fields_set else None
    return value


def _limits(base: LimitsSection, ext: LimitsSection) -> LimitsSection:
    update: dict[str, object] = {}
    for key in _LIMIT_NUMBERS:
        present = [v for v in (_set_value(base, key), _set_value(ext, key)) if v is not None]
        if present:
            update[key] = min(present)
    tools = dict(base.tools)
    for glob, limit in ext.tools.items():
        tools[glob] = min(limit, tools.get(glob, limit))
    if tools:
        update["tools"] = tools
    return base.model_copy(update=update)
