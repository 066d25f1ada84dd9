"""The argument conditions of `[[rules]]`: compiled once at profile load, checked on every call.

No I/O but what reading a path needs (`policy.paths`: symlinks and directory entries on disk).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import orjson

from mcpshield.policy.hosts import HostSet, host_readings, url_host
from mcpshield.policy.paths import PathReader, PathResolver, ReadBudget, Roots, Unreadable
from mcpshield.profile.model import ArgCondition

#: Longer values are unusable for regex conditions: a careless pattern on a long subject can
#: backtrack for seconds, and no legitimate value checked by a pattern is this long.
MAX_REGEX_SUBJECT_CHARS: Final = 64 * 1024
#: Elements of a list argument checked under a condition; a longer list is refused whole, never
#: partly checked (each element may mean a filesystem walk, and no real tool call needs more).
MAX_CHECKED_ELEMENTS: Final = 256
#: A refusal is read by a model: room for a path and a root, not for a pasted file.
MAX_MESSAGE_CHARS: Final = 300
#: One value quoted inside a message.
MAX_SHOWN_VALUE_CHARS: Final = 120

#: (the condition holds, how the value was read where that differs from the value as given)
Reading = tuple[bool, str | None]


class Mismatch:
    """The first condition of a rule that did not hold, in words a model can act on.

    The words are put together only when read: a deny rule that does not apply is the common
    case on the hot path, and nobody reads why it did not."""

    __slots__ = ("_message", "argument", "condition")

    def __init__(self, argument: str, condition: str, message: str | Callable[[], str]) -> None:
        self.argument = argument
        self.condition = condition
        self._message = message

    @property
    def message(self) -> str:
        if not isinstance(self._message, str):
            self._message = self._message()
        return self._message

    def __str__(self) -> str:
        return self.message

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mismatch):
            return NotImplemented
        return (self.argument, self.condition, self.message) == (other.argument, other.condition, other.message)

    __hash__ = None  # type: ignore[assignment]  # mutable cache inside: not a dict key

    def __repr__(self) -> str:
        return f"Mismatch({self.argument!r}, {self.condition!r}, {self.message!r})"


def printable(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` with control, format and separator characters escaped, cut to `limit` characters."""
    head = text[: limit + 1]
    if head.isprintable():  # the usual case, in one C call
        return head if len(head) <= limit else head[: limit - 1] + "…"
    escaped = "".join(_escape(ch) for ch in head)
    if len(escaped) > limit:
        return escaped[: limit - 1] + "…"
    return escaped


def _escape(ch: str) -> str:
    if ch.isprintable() or ch == " ":
        return ch
    return ch.encode("unicode_escape").decode("ascii")


def _show(value: object) -> str:
    """A value as it appears after `got`: strings quoted, everything else as JSON."""
    if isinstance(value, str):
        return '"' + printable(value, MAX_SHOWN_VALUE_CHARS) + '"'
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = f"a {type(value).__name__}"
    return printable(text, MAX_SHOWN_VALUE_CHARS)


def _shown_path(path: str) -> str:
    return printable(path, MAX_SHOWN_VALUE_CHARS)


def _listing(items: Iterable[str]) -> str:
    shown = list(items)
    return shown[0] if len(shown) == 1 else "one of " + ", ".join(shown)


class _Condition:
    """One compiled condition: `readings` is None for an unusable value, Unreadable for one that
    would take too much to read (and why), else one Reading per interpretation of the value."""

    __slots__ = ("expect", "key", "usable")
    #: False for conditions that judge a list as a whole rather than element by element.
    per_element = True
    #: True for conditions that read the filesystem: the values of one argument share a budget.
    reads_paths = False

    def __init__(self, key: str, expect: str, usable: str) -> None:
        self.key = key
        self.expect = expect
        self.usable = usable

    def readings(self, value: object, budget: ReadBudget | None = None) -> Sequence[Reading] | Unreadable | None:
        raise NotImplementedError


# -- paths --------------------------------------------------------------------------------


#: What a path condition can check; a relative path is resolved by the server, against a directory
#: of its own choosing (server-filesystem: its allowed directories), so it is unusable.
_ABSOLUTE: Final = (
    "an absolute path (or ~/...) or a local file:// URI (no host but localhost, no query or fragment, "
    "valid UTF-8 escapes); the server resolves relative paths its own way"
)


class _Within(_Condition):
    __slots__ = ("_inside", "_reader", "_roots")
    reads_paths = True

    def __init__(self, roots: Roots, reader: PathReader, inside: bool) -> None:
        where = _listing(roots.shown)
        expect = f"be inside {where}" if inside else f"not be inside {where}"
        super().__init__("within" if inside else "not_within", expect, _ABSOLUTE)
        self._roots = roots
        self._reader = reader
        self._inside = inside

    def readings(self, value: object, budget: ReadBudget | None = None) -> Sequence[Reading] | Unreadable | None:
        if isinstance(value, str) and value[:5].lower() == "file:" and ("?" in value or "#" in value):
            # fileURLToPath drops a query or fragment, a server slicing off `file://` keeps it as
            # part of the path: `file:///ok/x?/../../secret` is two different files.
            return None
        paths = self._reader.readings(value, budget)
        if paths is None or isinstance(paths, Unreadable):
            return paths
        return tuple((self._roots.contain(path) == self._inside, note) for path, note in paths)


# -- strings and scalars -------------------------------------------------------------------


class _Regex(_Condition):
    """Patterns fully matched against a string. A value with a newline is read twice, with `.`
    spanning newlines and without: a deny rule applies if either reading matches, an allow rule
    holds only if both do, so a second line can neither hide from a deny pattern (`.*rm .*`) nor
    ride along behind an allow pattern (`safe.*`)."""

    __slots__ = ("_dotall", "_patterns", "_want")

    def __init__(self, patterns: Sequence[str], want: bool) -> None:
        listed = ", ".join(printable(p, 60) for p in patterns) or "(no pattern)"
        expect = f"fully match one of the patterns {listed}" if want else f"match none of the patterns {listed}"
        usable = f"a string of at most {MAX_REGEX_SUBJECT_CHARS} characters"
        super().__init__("matches" if want else "not_matches", expect, usable)
        self._dotall = tuple(re.compile(p, re.DOTALL) for p in patterns)
        self._patterns = tuple(re.compile(p) for p in patterns)
        self._want = want

    def readings(self, value: object, budget: ReadBudget | None = None) -> Sequence[Reading] | Unreadable | None:
        if not isinstance(value, str) or len(value) > MAX_REGEX_SUBJECT_CHARS:
            return None
        spanning = any(pattern.fullmatch(value) for pattern in self._dotall)
        if "\n" not in value:  # the usual case: both readings agree
            return ((spanning == self._want, None),)
        line_by_line = any(pattern.fullmatch(value) for pattern in self._patterns)
        return (
            (spanning == self._want, "reading . as any character, newlines included"),
            (line_by_line == self._want, "reading . as any character but a newline"),
        )


def _scalar_key(value: object) -> tuple[str, object] | None:
    """A key under which equal scalars meet: 1 and 1.0 do, true and 1 never do."""
    if value is None:
        return ("null", None)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, str):
        return ("string", value)
    return None


class _OneOf(_Condition):
    __slots__ = ("_keys",)

    def __init__(self, options: Sequence[object]) -> None:
        listed = ", ".join(_show(option) for option in options) or "(nothing)"
        super().__init__("one_of", f"be one of {listed}", "a string, number, true, false or null")
        self._keys = frozenset(_scalar_key(option) for option in options)

    def readings(self, value: object, budget: ReadBudget | None = None) -> Sequence[Reading] | Unreadable | None:
        key = _scalar_key(value)
        return None if key is None else ((key in self._keys, None),)


class _MaxLength(_Condition):
    __slots__ = ("_limit",)
    per_element = False

    def __init__(self, limit: int) -> None:
        super().__init__("max_length", f"be at most {limit} characters (or {limit} bytes as JSON)", "JSON")
        self._limit = limit

    def readings(self, value: object, budget: ReadBudget | None = None) -> Sequence[Reading] | Unreadable | None:
        if isinstance(value, str):
            size, unit = len(value), "characters"
        else:
            try:
                size, unit = len(orjson.dumps(value)), "bytes as JSON"
            except TypeError:  # orjson.JSONEncodeError: not JSON (a huge int, deep nesting)
                return None
        return ((size <= self._limit, f"which is {size} {unit}"),)


# -- hosts ---------------------------------------------------------------------------------


class _Hosts(_Condition):
    """A URL's host against names, `*.` globs and CIDR ranges. An IPv6 host that carries an IPv4
    address (`[::ffff:169.254.169.254]`) is read both ways: a deny rule about either catches it,
    an allow rule must allow both."""

    __slots__ = ("_hosts",)

    def __init__(self, globs: Sequence[str]) -> None:
        listed = ", ".join(printable(glob, 60) for glob in globs) or "(no host)"
        expect = f"be a URL whose host matches {listed}"
        usable = "a plain http, https, ws or wss URL (no user@, spaces, backslashes or unusual host forms)"
        super().__init__("hosts", expect, usable)
        self._hosts = HostSet(globs)

    def readings(self, value: object, budget: ReadBudget | None = None) -> Sequence[Reading] | Unreadable | None:
        host = url_host(value)
        if host is None:
            return None
        readings = host_readings(host)
        if len(readings) == 1:
            return ((self._hosts.matches(host), f"whose host is {host}"),)
        note = f"whose host is {host}, which is {readings[1]}"
        return tuple((self._hosts.matches(reading), note) for reading in readings)


# -- rules ---------------------------------------------------------------------------------


def _values(value: object, per_element: bool) -> Sequence[object] | None:
    """The values a condition judges; None when there is nothing usable to check: an empty list,
    or one longer than `MAX_CHECKED_ELEMENTS`."""
    if per_element and isinstance(value, list):
        return value if 0 < len(value) <= MAX_CHECKED_ELEMENTS else None
    return (value,)


def _all_hold(name: str, condition: _Condition, present: bool, value: object) -> Mismatch | None:
    """The allow/ask reading: every value, every interpretation."""
    must = f"{name} must {condition.expect}"
    if not present:
        return _mismatch(name, condition, f"{must} (it was not given)")
    values = _values(value, condition.per_element)
    if values is None:
        return _mismatch(name, condition, f"{must} (got {_unchecked_list(value)})")
    budget = ReadBudget() if condition.reads_paths else None  # one per argument, its elements included
    for each in values:
        readings = condition.readings(each, budget)
        if readings is None:
            return _mismatch(name, condition, f"{must} (got {_show(each)}, which is not {condition.usable})")
        if isinstance(readings, Unreadable):
            return _mismatch(name, condition, f"{must} (got {_show(each)}: {readings.reason})")
        for holds, note in readings:
            if not holds:
                return _mismatch(name, condition, f"{must} (got {_show(each)}{', ' + note if note else ''})")
    return None


def _unchecked_list(value: object) -> str:
    if isinstance(value, list) and value:
        return f"a list of {len(value)} elements; at most {MAX_CHECKED_ELEMENTS} are checked"
    return "an empty list"


def _any_holds(name: str, condition: _Condition, present: bool, value: object) -> Mismatch | None:
    """The deny reading: some value, some interpretation, or nothing usable to check."""
    values = _values(value, condition.per_element) if present else None
    if values is None:
        return None
    budget = ReadBudget() if condition.reads_paths else None
    for each in values:
        readings = condition.readings(each, budget)
        if readings is None or isinstance(readings, Unreadable) or any(holds for holds, _ in readings):
            return None
    return Mismatch(
        name,
        condition.key,
        lambda: printable(f"the rule applies only when {name} would {condition.expect} (got {_show(value)})"),
    )


def _mismatch(name: str, condition: _Condition, message: str) -> Mismatch:
    return Mismatch(name, condition.key, printable(message))


class CompiledArgs:
    """The conditions of one rule, ready to check: `check` is None when the rule matches."""

    __slots__ = ("_conditions", "restrictive")

    def __init__(self, conditions: Sequence[tuple[str, Sequence[_Condition]]], restrictive: bool) -> None:
        self._conditions = tuple(conditions)
        #: True for allow/ask rules (every value must pass), False for deny rules (any value).
        self.restrictive = restrictive

    def check(self, arguments: Mapping[str, Any]) -> Mismatch | None:
        judge = _all_hold if self.restrictive else _any_holds
        for name, conditions in self._conditions:
            present = name in arguments
            value = arguments.get(name)
            for condition in conditions:
                mismatch = judge(name, condition, present, value)
                if mismatch is not None:
                    return mismatch
        return None

    def __repr__(self) -> str:
        names = ", ".join(name for name, _ in self._conditions)
        return f"CompiledArgs({names}, restrictive={self.restrictive})"


def _compile_one(condition: ArgCondition, reader: PathReader, resolve: PathResolver, home: str) -> list[_Condition]:
    """In the order a model can best act on: size first, then where, then what."""
    out: list[_Condition] = []
    if condition.max_length is not None:
        out.append(_MaxLength(condition.max_length))
    if condition.within is not None:
        out.append(_Within(Roots(condition.within, resolve, home, _shown_path), reader, inside=True))
    if condition.not_within is not None:
        out.append(_Within(Roots(condition.not_within, resolve, home, _shown_path), reader, inside=False))
    if condition.one_of is not None:
        out.append(_OneOf(condition.one_of))
    if condition.matches is not None:
        out.append(_Regex(condition.matches, want=True))
    if condition.not_matches is not None:
        out.append(_Regex(condition.not_matches, want=False))
    if condition.hosts is not None:
        out.append(_Hosts(condition.hosts))
    return out


def compile_conditions(
    args: Mapping[str, ArgCondition],
    action: str,
    resolve: PathResolver = os.path.realpath,
    home: str | None = None,
) -> CompiledArgs:
    """Compiles the `args` of a rule with `action` (allow, ask or deny).

    What cannot be checked is read the restrictive way. A condition of an allow/ask rule holds
    only if the argument is present, usable, and the condition holds for every value (each
    element of a list; `max_length` judges the list whole) under every reading; a condition of a
    deny rule holds if the argument is absent or unusable, or if it holds for some value under
    some reading. An empty list is unusable: it has nothing to check. So a deny rule with
    `not_within = R` matches exactly when an allow rule with `within = R` would not.

    Expands `~` against `home` (default: the user's), resolves the configured directories with
    `resolve` (a root counts in both its lexical and its resolved form), compiles regexes and host
    globs. Raises ValueError naming the argument for a directory or host glob that cannot be
    checked; the profile loader turns it into its own error.
    """
    if action not in ("allow", "ask", "deny"):
        raise ValueError(f"unknown rule action {action!r}")
    home_dir = os.path.expanduser("~") if home is None else home
    reader = PathReader(resolve, home_dir)
    compiled: list[tuple[str, Sequence[_Condition]]] = []
    for name, condition in args.items():
        try:
            compiled.append((name, _compile_one(condition, reader, resolve, home_dir)))
        except (ValueError, OSError) as exc:
            raise ValueError(f"argument {name!r}: {exc}") from exc
    return CompiledArgs(compiled, restrictive=action != "deny")
