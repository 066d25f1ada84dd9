"""Secrets in-process: the keyring store, the backend policy, the index, launch-time resolution and
session bus recovery, against real keyring backend classes (tests/file_keyring.py), never mocks."""

from __future__ import annotations

import io
import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from file_keyring import KEYRING_FILE_ENV, FileKeyring, LockedKeyring, LowPriorityKeyring, new, use
from keyring.backend import KeyringBackend
from keyring.backends import chainer, fail, null

from mcpshield.errors import SecretError
from mcpshield.secrets import backend, bus, commands, index, store
from mcpshield.secrets.resolve import resolve_env

TOKEN = "ghp_0123456789abcdefghij"  # noqa: S105 (a made-up token)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test: config in tmp_path, the opt-in unset, the bus variables restored afterwards, and
    a keyring that is never the user's (left as the failing backend afterwards)."""
    monkeypatch.setenv("MCPSHIELD_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv(KEYRING_FILE_ENV, str(tmp_path / "keyring.json"))
    monkeypatch.delenv(backend.INSECURE_ENV, raising=False)
    monkeypatch.delenv(bus.BUS_ENV, raising=False)  # recovery may set them; monkeypatch puts them back
    monkeypatch.delenv(bus.RUNTIME_ENV, raising=False)
    use(FileKeyring)
    yield
    use(fail.Keyring)


# -- the store


def test_a_stored_secret_is_one_item_under_the_mcpshield_service(tmp_path: Path) -> None:
    store.set("github", TOKEN)
    assert store.get("github") == TOKEN
    assert json.loads((tmp_path / "keyring.json").read_text()) == {"mcpshield": {"github": TOKEN}}


def test_a_secret_never_set_reads_as_none() -> None:
    assert store.get("absent") is None


def test_deleting_a_secret_says_whether_there_was_one() -> None:
    store.set("github", TOKEN)
    assert store.delete("github") is True
    assert store.get("github") is None
    assert store.delete("github") is False


@pytest.mark.parametrize("name", ["", "-leading-dash", "has space", "slash/name", "x" * 129])
def test_a_secret_name_outside_the_pattern_is_refused(name: str) -> None:
    with pytest.raises(SecretError, match="is not a secret name") as caught:
        store.get(name)
    assert "letters, digits" in caught.value.tip


def test_a_keyring_failure_is_one_secret_error_that_never_quotes_the_value() -> None:
    use(LockedKeyring)
    with pytest.raises(SecretError) as caught:
        store.set("github", TOKEN)
    assert TOKEN not in str(caught.value) and TOKEN not in caught.value.tip
    assert "KeyringLocked" in str(caught.value) and "[REDACTED]" in str(caught.value)
    assert "unlock" in caught.value.tip
    assert caught.value.__cause__ is None  # the backend's own exception held the value


# -- the backend policy


@pytest.mark.parametrize("refused", [fail.Keyring, null.Keyring])
def test_failing_and_null_backends_are_refused_with_a_way_to_a_real_one(refused: type[KeyringBackend]) -> None:
    use(refused)
    with pytest.raises(SecretError, match=f"the keyring backend {refused.__module__}.Keyring is refused"):
        store.get("github")
    check = backend.check_backend(os.environ)
    assert not check.usable
    assert backend.INSECURE_ENV in backend.how_to_fix()


def test_an_insecure_backend_is_used_when_the_user_opts_in(monkeypatch: pytest.MonkeyPatch) -> None:
    use(LowPriorityKeyring)
    with pytest.raises(SecretError, match="its priority is 0"):
        store.set("github", TOKEN)
    monkeypatch.setenv(backend.INSECURE_ENV, "1")
    store.set("github", TOKEN)
    assert store.get("github") == TOKEN
    check = backend.check_backend(os.environ)
    assert check.usable and not check.secure and check.opted_in


def test_no_opt_in_makes_a_backend_that_keeps_nothing_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(backend.INSECURE_ENV, "1")
    use(null.Keyring)
    with pytest.raises(SecretError, match="cannot make a backend that keeps nothing usable") as caught:
        store.get("github")
    assert backend.INSECURE_ENV not in caught.value.tip


def test_only_the_value_1_opts_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(backend.INSECURE_ENV, "yes")
    use(LowPriorityKeyring)
    assert not backend.check_backend(os.environ).usable


def _plaintext_class() -> type[KeyringBackend]:
    """A class standing where keyrings.alt keeps its plaintext backend (not installed here)."""

    attributes = {
        "__module__": "keyrings.alt.file",
        "priority": 0.5,  # a plain class attribute there too
        "get_password": lambda self, service, username: None,
        "set_password": lambda self, service, username, password: None,
        "delete_password": lambda self, service, username: None,
    }
    return type("PlaintextKeyring", (KeyringBackend,), attributes)


def test_plaintext_file_backends_and_their_subclasses_are_refused_by_class() -> None:
    plaintext = _plaintext_class()
    subclass = type("MyPlaintext", (plaintext,), {"__module__": "somewhere.else"})
    assert "plain file" in backend.judge(new(plaintext)).refusal
    assert "plain file" in backend.judge(new(subclass)).refusal


def test_an_unknown_backend_with_a_positive_priority_is_accepted() -> None:
    verdict = backend.judge(new(FileKeyring))
    assert verdict.secure and verdict.priority == 1 and verdict.backend == "file_keyring.FileKeyring"


class _EmptyChain(chainer.ChainerBackend):
    backends = ()


class _ChainWithPlaintext(chainer.ChainerBackend):
    backends = (new(FileKeyring), new(_plaintext_class()))


def test_a_chainer_is_judged_by_what_it_chains() -> None:
    use(_EmptyChain)
    with pytest.raises(SecretError, match="no usable backend to chain"):
        store.get("github")
    use(_ChainWithPlaintext)
    with pytest.raises(SecretError, match=r"keyrings\.alt\.file\.PlaintextKeyring \(chained by"):
        store.get("github")


# -- the index


def test_the_index_keeps_names_and_times_in_a_private_file_never_values(tmp_path: Path) -> None:
    commands.set_secret("github", stdin=io.BytesIO(TOKEN.encode() + b"\n"), interactive=False, out=io.StringIO())
    path = tmp_path / "config" / "secrets.json"
    assert path == index.index_path()
    document = json.loads(path.read_text())
    assert list(document["secrets"]) == ["github"] and TOKEN not in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert list(path.parent.glob(".secrets.json.*")) == []  # no temporary file left behind
    assert "github" in index.read()


@pytest.mark.parametrize("text", ["{not json", '{"version": 1}', '{"version": 1, "secrets": {"a": {}}}', "[]"])
def test_a_corrupt_index_is_an_error_with_a_tip_and_is_left_as_it_was(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config" / "secrets.json"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(SecretError, match="is corrupt") as caught:
        index.record("github")
    assert "no secret values" in caught.value.tip
    assert path.read_text() == text


# -- setting a secret


def test_a_piped_value_loses_one_trailing_newline_only() -> None:
    commands.set_secret("a", stdin=io.BytesIO(b"line one\nline two\n\n"), interactive=False, out=io.StringIO())
    commands.set_secret("b", stdin=io.BytesIO(b"windows-value\r\n"), interactive=False, out=io.StringIO())
    assert store.get("a") == "line one\nline two\n"
    assert store.get("b") == "windows-value"


def test_a_prompted_value_must_be_typed_twice_the_same() -> None:
    answers = iter([TOKEN, TOKEN + "x"])
    with pytest.raises(SecretError, match="differ"):
        commands.set_secret("github", interactive=True, prompt=lambda _: next(answers), out=io.StringIO())
    assert store.get("github") is None
    answers = iter([TOKEN, TOKEN])
    commands.set_secret("github", interactive=True, prompt=lambda _: next(answers), out=io.StringIO())
    assert store.get("github") == TOKEN


def _record(asked: list[str], text: str) -> str:
    asked.append(text)
    return TOKEN


def test_an_insecure_backend_is_refused_before_a_value_is_asked_for() -> None:
    use(fail.Keyring)
    asked: list[str] = []
    with pytest.raises(SecretError, match=r"the keyring backend keyring\.backends\.fail\.Keyring is refused"):
        commands.set_secret("github", interactive=True, prompt=lambda text: _record(asked, text), out=io.StringIO())
    assert asked == []


# -- resolving a profile's [env]


def test_resolve_env_takes_keyring_env_and_literal_values() -> None:
    store.set("github", TOKEN)
    spec = {"GITHUB_TOKEN": "keyring:github", "API_URL": "env:CI_API_URL", "MODE": "read-only-mode"}
    resolved = resolve_env(spec, {"CI_API_URL": "https://api.example.com", "OTHER": "x"})
    assert resolved.values == {
        "GITHUB_TOKEN": TOKEN,
        "API_URL": "https://api.example.com",
        "MODE": "read-only-mode",
    }
    assert resolved.redact == {"github": TOKEN, "API_URL": "https://api.example.com", "MODE": "read-only-mode"}


def test_a_resolved_env_shows_names_but_no_values() -> None:
    store.set("github", TOKEN)
    text = repr(resolve_env({"GITHUB_TOKEN": "keyring:github", "MODE": "literal-value"}, {}))
    assert "GITHUB_TOKEN" in text and "github" in text
    assert TOKEN not in text and "literal-value" not in text


def test_a_missing_secret_names_it_and_the_set_command() -> None:
    store.set("present", TOKEN)
    spec = {"A": "keyring:present", "B": "keyring:gone", "C": "keyring:also-gone"}
    with pytest.raises(SecretError, match="'also-gone', 'gone', which are not in the keyring") as caught:
        resolve_env(spec, {})
    assert "mcpshield secret set also-gone; mcpshield secret set gone" in caught.value.tip
    assert TOKEN not in str(caught.value)


def test_a_missing_variable_names_it_and_the_variable_it_was_for() -> None:
    with pytest.raises(SecretError, match=r"takes CI_TOKEN \(for TOKEN\) from mcpshield's environment") as caught:
        resolve_env({"TOKEN": "env:CI_TOKEN"}, {"CI_OTHER": "x"})
    assert "environment that starts mcpshield" in caught.value.tip


def test_the_keyring_is_not_touched_without_keyring_entries() -> None:
    use(fail.Keyring)  # any keyring access would raise
    resolved = resolve_env({"A": "env:X", "B": "literal"}, {"X": "from-env"})
    assert resolved.values == {"A": "from-env", "B": "literal"}


def test_the_keyring_backend_is_checked_before_a_secret_is_resolved() -> None:
    use(null.Keyring)
    with pytest.raises(SecretError, match=r"the keyring backend keyring\.backends\.null\.Keyring is refused"):
        resolve_env({"A": "keyring:github"}, {})


# -- session bus recovery


def _runtime_dir(base: Path, uid: int, mode: int = 0o700) -> Path:
    runtime = base / str(uid)
    runtime.mkdir(parents=True)
    runtime.chmod(mode)
    return runtime


def _listen(directory: Path, monkeypatch: pytest.MonkeyPatch) -> socket.socket:
    """A real Unix socket at directory/bus, bound by a relative name (tmp_path can outgrow sun_path)."""
    monkeypatch.chdir(directory)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(bus.BUS_SOCKET)
    return server


def test_the_session_bus_is_recovered_from_our_own_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = _runtime_dir(tmp_path, os.getuid())
    environ: dict[str, str] = {"PATH": "/usr/bin"}
    with _listen(runtime, monkeypatch):
        recovered = bus.recover_session_bus(environ, base=tmp_path)
    assert recovered == (bus.RUNTIME_ENV, bus.BUS_ENV)
    assert environ[bus.RUNTIME_ENV] == str(runtime)
    assert environ[bus.BUS_ENV] == f"unix:path={runtime}/bus"


def test_a_regular_file_named_bus_is_not_a_session_bus(tmp_path: Path) -> None:
    runtime = _runtime_dir(tmp_path, os.getuid())
    (runtime / "bus").write_text("not a socket")
    environ: dict[str, str] = {}
    assert bus.recover_session_bus(environ, base=tmp_path) == (bus.RUNTIME_ENV,)
    assert bus.BUS_ENV not in environ


def test_another_users_runtime_directory_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = os.getuid() + 1  # the directory and socket below are ours, so not that user's
    runtime = _runtime_dir(tmp_path, other)
    environ: dict[str, str] = {}
    with _listen(runtime, monkeypatch):
        assert bus.recover_session_bus(environ, base=tmp_path, uid=other) == ()
    assert environ == {}


def test_a_runtime_directory_open_to_others_is_not_a_runtime_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = _runtime_dir(tmp_path, os.getuid(), mode=0o755)
    environ: dict[str, str] = {}
    with _listen(runtime, monkeypatch):
        assert bus.recover_session_bus(environ, base=tmp_path) == (bus.BUS_ENV,)
    assert bus.RUNTIME_ENV not in environ


def test_variables_already_set_are_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = _runtime_dir(tmp_path, os.getuid())
    environ = {bus.BUS_ENV: "unix:path=/elsewhere", bus.RUNTIME_ENV: "/elsewhere"}
    with _listen(runtime, monkeypatch):
        assert bus.recover_session_bus(environ, base=tmp_path) == ()
    assert environ == {bus.BUS_ENV: "unix:path=/elsewhere", bus.RUNTIME_ENV: "/elsewhere"}


def test_a_bus_path_is_escaped_as_a_dbus_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "with space,comma"
    runtime = _runtime_dir(base, os.getuid())
    environ: dict[str, str] = {}
    with _listen(runtime, monkeypatch):
        bus.recover_session_bus(environ, base=base)
    assert environ[bus.BUS_ENV].endswith(f"/with%20space%2ccomma/{os.getuid()}/bus")
