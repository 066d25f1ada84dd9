"""The Seatbelt profile's text (it only runs on macOS): read back with a small SBPL reader, it
denies by default, grants what the spec says, denies `deny` last, lets the network through only
as the spec says, and quotes every path so that it reads back unchanged."""

from __future__ import annotations

import re
from typing import Final, Union

import pytest

from mcpshield.errors import SandboxError
from mcpshield.sandbox.seatbelt import MACH_NETWORK, SANDBOX_EXEC, quote, seatbelt_argv, seatbelt_profile
from mcpshield.sandbox.spec import SandboxSpec

Form = Union[str, "Str", list["Form"]]
SYSTEM: Final = ("/usr", "/System", "/dev", "/opt/python")
_TOKEN: Final = re.compile(r'\s+|;[^\n]*|\(|\)|"(?:[^"\\]|\\.)*"|[^\s()";]+', re.S)
_UNESCAPE: Final = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


class Str(str):
    """A string literal read from the profile (as opposed to a symbol)."""


def read_sbpl(text: str) -> list[Form]:
    """The top-level forms of an SBPL text; AssertionError on unbalanced parentheses or a
    stray character."""
    stack: list[list[Form]] = [[]]
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        assert match, f"unreadable at {text[position : position + 20]!r}"
        word, position = match.group(0), match.end()
        if word.isspace() or word.startswith(";"):
            continue
        if word == "(":
            stack.append([])
        elif word == ")":
            assert len(stack) > 1, "unbalanced )"
            done = stack.pop()
            stack[-1].append(done)
        elif word.startswith('"'):
            stack[-1].append(Str(re.sub(r"\\(.)", lambda m: _UNESCAPE[m.group(1)], word[1:-1], flags=re.S)))
        else:
            stack[-1].append(word)
    assert len(stack) == 1, "unbalanced ("
    return stack[0]


def rules(text: str) -> list[list[Form]]:
    forms = read_sbpl(text)
    assert all(isinstance(form, list) for form in forms)
    return [form for form in forms if isinstance(form, list)]


def filters(rule: list[Form], kind: str) -> list[str]:
    """The string arguments of a rule's filters of `kind` (subpath, literal, global-name, ...)."""
    return [str(f[1]) for f in rule if isinstance(f, list) and f and f[0] == kind]


def profile(spec: SandboxSpec, *, extra_write: tuple[str, ...] = (), port: int | None = None) -> str:
    return seatbelt_profile(spec, system_read=SYSTEM, extra_write=extra_write, proxy_port=port)


def test_the_profile_denies_by_default_first() -> None:
    forms = rules(profile(SandboxSpec()))
    assert forms[0] == ["version", "1"]
    assert forms[1] == ["deny", "default"]


def test_a_read_list_grants_the_system_and_the_listed_paths_only() -> None:
    forms = rules(profile(SandboxSpec(read=("/Users/me/projects",))))
    granted = [path for rule in forms if rule[:2] == ["allow", "file-read*"] for path in filters(rule, "subpath")]
    assert "/Users/me/projects" in granted and "/usr" in granted and "/opt/python" in granted
    assert "/dev" not in granted  # devices come one by one
    assert ["allow", "file-read*"] not in forms


def test_no_read_list_grants_every_read() -> None:
    assert ["allow", "file-read*"] in rules(profile(SandboxSpec(read=None)))


def test_write_paths_and_private_caches_are_writable_under_their_macos_names() -> None:
    forms = rules(profile(SandboxSpec(write=("/tmp/out",)), extra_write=("/Users/me/Library/Caches/x",)))
    (rule,) = [rule for rule in forms if rule[:3] == ["allow", "file-read*", "file-write*"]]
    assert filters(rule, "subpath") == ["/tmp/out", "/private/tmp/out", "/Users/me/Library/Caches/x"]


def test_deny_paths_are_denied_last_for_reads_and_writes() -> None:
    forms = rules(profile(SandboxSpec(read=None, write=("/Users/me",), deny=("/Users/me/.ssh", "/Users/me/.aws"))))
    last = forms[-1]
    assert last[:3] == ["deny", "file-read*", "file-write*"]
    assert filters(last, "subpath") == ["/Users/me/.ssh", "/Users/me/.aws"]
    assert not any(rule[0] == "allow" and "file-read*" in rule for rule in forms[forms.index(last) :])


def test_network_false_allows_no_network_operation() -> None:
    text = profile(SandboxSpec(network=False))
    assert not any(isinstance(op, str) and op.startswith("network") for rule in rules(text) for op in rule)
    assert "trustd" not in text


def test_network_true_allows_all_network_and_name_resolution() -> None:
    forms = rules(profile(SandboxSpec(network=True)))
    assert ["allow", "network*"] in forms
    lookups = [name for rule in forms if rule[:2] == ["allow", "mach-lookup"] for name in filters(rule, "global-name")]
    assert set(MACH_NETWORK) <= set(lookups)


def test_a_host_list_allows_only_the_proxy_on_localhost() -> None:
    forms = rules(profile(SandboxSpec(network=("registry.npmjs.org",)), port=41234))
    network = [rule for rule in forms if any(isinstance(op, str) and op.startswith("network") for op in rule)]
    assert network == [["allow", "network-outbound", ["remote", "ip", Str("localhost:41234")]]]


def test_a_host_list_without_a_proxy_port_is_refused() -> None:
    with pytest.raises(SandboxError, match="proxy"):
        profile(SandboxSpec(network=("example.org",)), port=None)


def test_the_keychain_is_never_reachable() -> None:
    for network in (False, True):
        assert "com.apple.SecurityServer" not in profile(SandboxSpec(network=network))


@pytest.mark.parametrize(
    "path", ['/Users/me/a "quoted" name', "/Users/me/back\\slash", "/Users/me/new\nline", "/Users/me/(paren)"]
)
def test_paths_are_quoted_so_that_they_read_back_unchanged(path: str) -> None:
    forms = rules(profile(SandboxSpec(read=(path,), deny=(path + "/x",))))
    granted = [p for rule in forms for p in filters(rule, "subpath")]
    assert path in granted and path + "/x" in granted


def test_a_path_with_another_control_character_is_refused() -> None:
    with pytest.raises(SandboxError, match="control character"):
        quote("/Users/me/\x1b[31m")


def test_sandbox_exec_is_called_by_absolute_path_with_the_profile_as_an_argument() -> None:
    text = profile(SandboxSpec())
    argv = seatbelt_argv(text, ["/usr/bin/python3", "-m", "mcpshield.sandbox.inner"])
    assert argv == [SANDBOX_EXEC, "-p", text, "--", "/usr/bin/python3", "-m", "mcpshield.sandbox.inner"]
    assert SANDBOX_EXEC == "/usr/bin/sandbox-exec"
