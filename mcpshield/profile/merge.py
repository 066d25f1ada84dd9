"""How a profile that `extends` another is combined with it: a pure function of two profiles."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from pydantic import BaseModel

from mcpshield.profile.model import ApprovalSection, LimitsSection, Profile, SandboxSection, ServerSection
from mcpshield.sandbox.spec import DEFAULT_DENY, DEFAULT_NETWORK_DENY, inside

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
    | approval.always             | union, base's first, without repeats                        |
    | sandbox (one side only)     | that side's                                                 |
    | sandbox.deny, network_deny  | union (the default deny list counts where a side has none)  |
    | sandbox.read, write         | the paths both grant (the deeper of two nested ones)        |
    | sandbox.network             | false over a host list over true; of two lists, ext's       |
    |                             | entries base's list also allows                             |
    | sandbox limits, enforcement | the stricter; backend and caches ext's where set            |
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
        approval=_approval(base.approval, ext.approval),
        sandbox=_sandbox(base.sandbox, ext.sandbox),
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


def _sandbox(base: SandboxSection | None, ext: SandboxSection | None) -> SandboxSection | None:
    """The stricter of two sandboxes, key by key: an extending profile narrows its base's
    sandbox and never widens it."""
    if base is None or ext is None:
        return ext or base
    merged = _override(base, ext, skip=_SANDBOX_NARROWED)
    if merged.backend == "none" and base.backend != "none":  # "none" would drop the base's sandbox
        merged = merged.model_copy(update={"backend": base.backend})
    update: dict[str, object] = {
        "enforcement": "required" if "required" in (base.enforcement, ext.enforcement) else "best_effort",
        "network": _narrower_network(base.network, ext.network),
        "read": _narrower_paths(base.read, ext.read),
        "write": _narrower_paths(base.write, ext.write) or (),
        "memory_mb": _smaller_limit(base.memory_mb, ext.memory_mb),
        "cpu_seconds": _smaller_limit(base.cpu_seconds, ext.cpu_seconds),
        "max_open_files": min(base.max_open_files, ext.max_open_files),
    }
    for key, default in (("deny", DEFAULT_DENY), ("network_deny", DEFAULT_NETWORK_DENY)):
        sides = (getattr(base, key), getattr(ext, key))
        if sides != (None, None):
            update[key] = _union(*(default if side is None else side for side in sides))
    return merged.model_copy(update=update)


#: The [sandbox] keys merged by taking the stricter side rather than the extender's.
_SANDBOX_NARROWED = (
    "enforcement", "network", "network_deny", "read", "write", "deny", "memory_mb", "cpu_seconds",
    "max_open_files",
)  # fmt: skip


def _smaller_limit(first: int, second: int) -> int:
    """The stricter of two limits where 0 means none."""
    return min(first, second) if first and second else first or second


def _narrower_paths(base: tuple[str, ...] | None, ext: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """The paths both lists grant (None: everything): for each pair, the deeper of the two when
    one lies inside the other."""
    if base is None or ext is None:
        return ext if base is None else base
    kept = [b for b in base for e in ext if inside(b, e)] + [e for e in ext for b in base if inside(e, b)]
    return tuple(dict.fromkeys(kept))


def _narrower_network(base: bool | tuple[str, ...], ext: bool | tuple[str, ...]) -> bool | tuple[str, ...]:
    """false beats a host list beats true; of two host lists, the extender's entries that the
    base's list also allows (an entry whose reach is unclear is dropped: stricter)."""
    if base is False or ext is False:
        return False
    if base is True or ext is True:
        return ext if base is True else base
    assert isinstance(base, tuple) and isinstance(ext, tuple)
    if "*" in base:
        return ext
    return tuple(entry for entry in ext if entry in base or _host_within(entry, base))


def _host_within(entry: str, base: tuple[str, ...]) -> bool:
    """Whether a plain name or `*.` glob lies inside one of base's `*.` globs."""
    name = entry[2:] if entry.startswith("*.") else entry
    return any(b.startswith("*.") and name.lower().endswith("." + b[2:].lower()) for b in base)


def _approval(base: ApprovalSection, ext: ApprovalSection) -> ApprovalSection:
    """[approval]: each key ext's where set, but the calls approved always are united."""
    merged = _override(base, ext, skip=("always",))
    return merged.model_copy(update={"always": tuple(dict.fromkeys((*base.always, *ext.always)))})
