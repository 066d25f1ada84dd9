"""The starter profile `profile init` writes: every tool the server listed, sorted into allow or ask.

A tool is allowed only if its name starts with a read verb (`READ_VERBS`), contains no word that
hints at secrets (`SECRET_WORDS`), and the server does not itself mark it as writing or destructive.
Everything else asks; tools the server did not list fall to `default = "deny"`. The TOML is written
by hand (tomli_w cannot write comments), so every string is escaped here and the result re-parsed;
tool names are written as globs that match only themselves (`read_[x]*` becomes `read_[[]x][*]`).
"""

from __future__ import annotations

import os
import re
import tomllib
import unicodedata
from collections.abc import Sequence
from typing import Final

from mcpshield.errors import ProfileError
from mcpshield.profile.model import Profile
from mcpshield.profile.probe import ServerReport, ToolInfo
from mcpshield.profile.tomltext import toml_string

#: First words of tool names that read and change nothing. Deliberately short: `fetch` and `query`
#: are left out (a fetch reaches any host, a query may write), as are `open`, `check`, `run`.
READ_VERBS: Final = frozenset({"get", "list", "read", "search", "find", "describe", "show", "view"})
#: Words that make a read-looking tool ask anyway: reading these hands secrets to the model.
SECRET_WORDS: Final = frozenset(
    {"env", "environ", "environment", "secret", "secrets", "token", "tokens", "password", "passwords",
     "credential", "credentials", "cookie", "cookies", "key", "keys"}
)  # fmt: skip
#: Launchers whose first plain argument, not themselves, names the server.
LAUNCHERS: Final = frozenset(
    {"npx", "bunx", "pnpx", "uvx", "pipx", "node", "bun", "deno", "python", "python3", "uv", "npm", "pnpm",
     "yarn", "docker", "podman", "sh", "bash", "env"}
)  # fmt: skip
#: Launcher subcommands passed over when looking for the server's name (`uv run X`, `pipx run X`).
SUBCOMMANDS: Final = frozenset({"run", "exec", "x", "dlx", "tool"})
#: Ends every starter profile: the OS sandbox is the server's to need, so it is only suggested.
SANDBOX_HINT: Final = (
    "# The OS sandbox (docs/sandbox.md): uncomment to confine the server to what it needs;",
    "# `mcpshield doctor` says what this machine can enforce.",
    "# [sandbox]",
    '# network = false          # or the hosts it must reach: ["api.example.com"]',
    "# write = []               # the folders it may change",
    "# memory_mb = 2048",
)
#: Longest description kept (as a comment above each tool).
DESCRIPTION_CHARS: Final = 100
_NPM_PACKAGE: Final = re.compile(r"@[a-z0-9][\w.-]*/[a-z0-9][\w.-]*", re.IGNORECASE)
_WORD: Final = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
#: What fnmatch reads as a wildcard; `]` and `!` mean something only after a `[`.
_GLOB_CHARS: Final = re.compile(r"[*?\[]")


def escape_glob(name: str) -> str:
    """A glob that matches `name` and nothing else: each wildcard character in a class of its own."""
    return _GLOB_CHARS.sub(lambda m: f"[{m[0]}]", name)


def is_read_looking(tool: ToolInfo) -> bool:
    """Allowed by the starter profile: a read verb first, no secret word, not marked as a writer."""
    words = [word.lower() for word in _WORD.findall(tool.name)]
    if not words or words[0] not in READ_VERBS or SECRET_WORDS.intersection(words):
        return False
    hints = tool.annotations
    return hints.get("readOnlyHint") is not False and hints.get("destructiveHint") is not True


def match_pattern(argv: Sequence[str]) -> str:
    """A `[server] match` substring for this command: an npm package named anywhere in it, else the
    first plain argument after a launcher (`uvx mcp-server-time`), else the program's name.
    Never a whole argument list, which may hold secrets (connection strings, tokens)."""
    for arg in argv:
        package = _NPM_PACKAGE.search(arg)
        if package:
            return package[0]
    program = os.path.basename(argv[0])
    if program.removesuffix(".exe") not in LAUNCHERS and not re.fullmatch(r"python3?(\.\d+)?", program):
        # A pattern with glob characters must match a whole argument: then match argv[0] exactly.
        return escape_glob(argv[0]) if _GLOB_CHARS.search(program) else program
    for arg in argv[1:]:
        if arg.startswith("-") or arg in SUBCOMMANDS or "://" in arg:
            continue
        name = re.split(r"==|(?<=.)@", os.path.basename(arg.rstrip("/")))[0]  # no version
        if name and "=" not in name and not _GLOB_CHARS.search(name):  # NAME=VALUE settings are not names
            return name
    return program


def render(name: str, argv: Sequence[str], report: ServerReport) -> str:
    """The starter profile's TOML text, checked by parsing and validating it."""
    tools = _unique(report.tools)
    allow = [tool for tool in tools if is_read_looking(tool)]
    ask = [tool for tool in tools if not is_read_looking(tool)]
    server = " ".join(filter(None, (report.name, report.version))) or "the server"
    lines = [
        f"# Starter profile written by `mcpshield profile init` from the tools {_comment(server)} listed.",
        "# Review it before relying on it: the allow list is a guess from tool names (see docs/profiles.md).",
        "# Tools whose names start with a read verb are allowed, the others ask, unlisted tools are denied.",
        "",
        "[server]",
        f"name = {toml_string(name)}",
        f"match = [{toml_string(match_pattern(argv))}]",
        "",
        "[tools]",
        'default = "deny"',
        *_tool_list("allow", allow),
        *_tool_list("ask", ask),
        "",
        *SANDBOX_HINT,
    ]
    text = "\n".join(lines) + "\n"
    _self_check(text, allow, ask)
    return text


def _unique(tools: Sequence[ToolInfo]) -> list[ToolInfo]:
    """Tools with a usable name, each once. A name TOML cannot hold (a lone surrogate) is left to
    the default, deny."""
    seen: dict[str, ToolInfo] = {}
    for tool in tools:
        if tool.name and not any(unicodedata.category(ch) == "Cs" for ch in tool.name):
            seen.setdefault(tool.name, tool)
    return list(seen.values())


def _tool_list(key: str, tools: Sequence[ToolInfo]) -> list[str]:
    if not tools:
        return [f"{key} = []"]
    lines = [f"{key} = ["]
    for tool in tools:
        description = _comment(tool.description)
        if description:
            lines.append(f"    # {description}")
        lines.append(f"    {toml_string(escape_glob(tool.name))},")
    return [*lines, "]"]


def _comment(text: str) -> str:
    """One line for a TOML comment: control, format (bidi) and surrogate characters removed,
    whitespace collapsed, truncated."""
    kept = "".join(" " if ch.isspace() else ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf", "Cs"))
    line = " ".join(kept.split())
    return line if len(line) <= DESCRIPTION_CHARS else line[: DESCRIPTION_CHARS - 1].rstrip() + "…"


def _self_check(text: str, allow: Sequence[ToolInfo], ask: Sequence[ToolInfo]) -> None:
    """The text must parse to exactly the lists meant; anything else is a bug here, not the user's."""
    try:
        profile = Profile.model_validate(tomllib.loads(text))
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ProfileError(
            f"the starter profile came out malformed ({exc})", "please report this bug; nothing was written"
        ) from None
    meant = (tuple(escape_glob(t.name) for t in allow), tuple(escape_glob(t.name) for t in ask))
    if (profile.tools.allow, profile.tools.ask) != meant:
        raise ProfileError(
            "the starter profile does not say what was meant", "please report this bug; nothing was written"
        )
