"""`mcpshield secret set | list | rm | doctor`: what each does and prints, given parsed arguments.
A secret's value is read from a hidden prompt or stdin, never from argv, and never printed."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable, Sequence
from typing import BinaryIO, Final, TextIO

from mcpshield.errors import ProfileError, SecretError, ShieldError, UsageError
from mcpshield.policy.redact import MIN_SECRET_CHARS
from mcpshield.profile import load
from mcpshield.secrets import index, store
from mcpshield.secrets.resolve import KEYRING_PREFIX

#: Longest value `secret set` accepts: tokens and keys are far shorter, and a bound keeps a
#: mistaken pipe (a whole file) out of the keyring. Windows' credential store holds at most 2,560.
MAX_SECRET_BYTES: Final = 64 * 1024
_ARGV_TIP: Final = (
    "arguments are visible to other processes and kept in shell history: run `mcpshield secret set NAME` "
    "and type the value at the prompt, or pipe it in (e.g. `pass show github | mcpshield secret set github`)"
)


def set_secret(
    name: str,
    extra: Sequence[str] = (),
    *,
    stdin: BinaryIO | None = None,
    interactive: bool | None = None,
    prompt: Callable[[str], str] = getpass.getpass,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Stores a secret: prompted twice on a terminal, else read from stdin; `extra` (anything after
    NAME on the command line) is refused without being echoed."""
    store.check_name(name)
    if extra:
        raise UsageError("mcpshield secret set never takes the value on the command line", _ARGV_TIP)
    check = store.ready()  # before the user types a value the backend would refuse
    interactive = sys.stdin.isatty() if interactive is None else interactive
    value = _prompt_twice(name, prompt) if interactive else _read_piped(stdin or sys.stdin.buffer)
    _check_value(value)
    if len(value) < MIN_SECRET_CHARS:  # the redactor leaves these alone: they occur by chance in text
        err.write(
            f"mcpshield: warning: the value is shorter than {MIN_SECRET_CHARS} characters; values this "
            "short are not redacted from what the server sends back\n"
        )
    store.set(name, value)
    index.record(name)
    out.write(f"stored the secret {name!r} in {check.active}; a profile uses it as {KEYRING_PREFIX}{name}\n")
    return 0


def _prompt_twice(name: str, prompt: Callable[[str], str]) -> str:
    try:
        first = prompt(f"value of the secret {name} (hidden): ")
        second = prompt("the same again: ")
    except EOFError:
        raise SecretError("no value was entered", "run it again and type the value twice") from None
    if first != second:
        raise SecretError("the two values differ; nothing was stored", "run it again and type the same value twice")
    return first


def _read_piped(stdin: BinaryIO) -> str:
    """The value from stdin, bounded, UTF-8, with one trailing newline (\\n or \\r\\n) removed."""
    raw = stdin.read(MAX_SECRET_BYTES + 1)
    if len(raw) > MAX_SECRET_BYTES:
        raise SecretError(
            f"the value on stdin is longer than {MAX_SECRET_BYTES} bytes; nothing was stored",
            "pipe in the secret itself, not a file that contains it",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError("the value on stdin is not UTF-8 text; nothing was stored", "pipe in text") from None
    return text.removesuffix("\r\n") if text.endswith("\r\n") else text.removesuffix("\n")


def _check_value(value: str) -> None:
    if not value:
        raise SecretError(
            "the value is empty; nothing was stored",
            "type the value at the prompt, or pipe it in: `pass show github | mcpshield secret set github`",
        )
    if "\0" in value:
        raise SecretError(
            "the value contains a NUL character, which no environment variable can carry; nothing was stored",
            "check what was piped in",
        )


def remove_secret(name: str, out: TextIO = sys.stdout) -> int:
    """Removes a secret from the keyring and the index; one in neither is an error."""
    store.check_name(name)
    removed = store.delete(name)
    forgotten = index.forget(name)
    if not (removed or forgotten):
        raise SecretError(
            f"there is no secret named {name!r} in the keyring",
            "`mcpshield secret list` shows the secrets mcpshield stored and the ones profiles use",
        )
    out.write(
        f"removed the secret {name!r}\n"
        if removed
        else f"the secret {name!r} was no longer in the keyring; removed it from the index\n"
    )
    users = secret_users(on_error=lambda _error: None).get(name)
    if users:
        out.write(f"note: {', '.join(users)} still use it; `run` refuses to start them until it is set again\n")
    return 0


def list_secrets(out: TextIO = sys.stdout) -> int:
    """A table of the secrets in the index and the secrets profiles use: NAME, SET, USED BY.
    Reads no keyring; a malformed profile is reported after the table."""
    indexed = index.read()
    broken: list[ShieldError] = []
    users = secret_users(on_error=broken.append)
    rows = [("NAME", "SET", "USED BY")]
    for name in sorted(set(indexed) | set(users)):
        when = indexed.get(name)
        set_at = when.astimezone().strftime("%Y-%m-%d %H:%M") if when else "missing"
        rows.append((name, set_at, ", ".join(users.get(name, ())) or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for row in rows:
        out.write(f"{row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}\n")
    if len(rows) == 1:
        out.write("(none yet: no secret stored, and no profile's [env] uses keyring:NAME)\n")
    out.write(f"\nindex: {index.index_path()} (no values; `mcpshield secret set NAME` stores a missing one)\n")
    if broken:
        raise ProfileError(f"{len(broken)} profile(s) are invalid; the first: {broken[0]}", broken[0].tip)
    return 0


def secret_users(on_error: Callable[[ShieldError], None]) -> dict[str, list[str]]:
    """Secret NAME -> the profiles (in effect on the search path) whose [env] uses it."""
    users: dict[str, list[str]] = {}
    for entry in load.available():
        if entry.shadowed:
            continue
        try:
            env = load.load_file(entry.path).profile.env
        except ShieldError as error:
            on_error(error)
            continue
        for value in env.values():
            if value.startswith(KEYRING_PREFIX):
                users.setdefault(value.removeprefix(KEYRING_PREFIX), []).append(entry.name)
    return {name: sorted(set(profiles)) for name, profiles in users.items()}
