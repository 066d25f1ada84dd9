"""`mcpshield secret set | list | rm | doctor` as a user runs them: real subprocesses whose keyring
is the test backend (PYTHON_KEYRING_BACKEND=file_keyring.FileKeyring) or one of keyring's own."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest
from conftest import ROOT
from file_keyring import subprocess_env

TOKEN: Final = "ghp_0123456789abcdefghij"  # noqa: S105 (a made-up token)
#: Bound on one `mcpshield secret` command (start-up, a keyring call, a file write).
COMMAND_TIMEOUT_S: Final = 30.0


def secret(
    tmp_path: Path, *args: str, stdin: str = "", backend: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = subprocess_env(tmp_path, **env) if backend is None else subprocess_env(tmp_path, backend, **env)
    return subprocess.run(
        [sys.executable, "-m", "mcpshield", "secret", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environ,
        cwd=ROOT,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


def stored(tmp_path: Path) -> dict[str, str]:
    """What the test keyring holds under the mcpshield service."""
    path = tmp_path / "keyring.json"
    items: dict[str, dict[str, str]] = json.loads(path.read_text()) if path.exists() else {}
    return items.get("mcpshield", {})


def write_profile(tmp_path: Path, name: str, env: dict[str, str]) -> None:
    profiles = tmp_path / "config" / "profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    table = "".join(f'{key} = "{value}"\n' for key, value in env.items())
    (profiles / f"{name}.toml").write_text(f'[server]\nmatch = ["{name}-server"]\n\n[env]\n{table}')


def test_secret_set_stores_a_piped_value_without_its_trailing_newline(tmp_path: Path) -> None:
    done = secret(tmp_path, "set", "github", stdin=TOKEN + "\n")
    assert done.returncode == 0, done.stderr
    assert stored(tmp_path) == {"github": TOKEN}
    assert "keyring:github" in done.stdout
    assert TOKEN not in done.stdout + done.stderr


def _read_until(fd: int, wanted: bytes, seen: bytearray) -> None:
    """Reads the terminal until `wanted` appears, each wait bounded."""
    while wanted not in seen:
        ready, _, _ = select.select([fd], [], [], COMMAND_TIMEOUT_S)
        assert ready, f"no {wanted!r} on the terminal; got {bytes(seen)!r}"
        seen += os.read(fd, 4096)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_secret_set_on_a_terminal_asks_twice_without_echoing(tmp_path: Path) -> None:
    terminal, child_side = os.openpty()
    # A session of its own: no controlling terminal, so getpass works on stdin (the pseudo-terminal)
    # and never on the terminal running the tests.
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcpshield", "secret", "set", "github"],
        stdin=child_side,
        stdout=child_side,
        stderr=child_side,
        env=subprocess_env(tmp_path),
        start_new_session=True,
    )
    os.close(child_side)
    seen = bytearray()
    try:
        _read_until(terminal, b"(hidden): ", seen)
        os.write(terminal, TOKEN.encode() + b"\n")
        _read_until(terminal, b"again: ", seen)
        os.write(terminal, TOKEN.encode() + b"\n")
        _read_until(terminal, b"keyring:github", seen)
        assert proc.wait(COMMAND_TIMEOUT_S) == 0
    finally:
        proc.kill()  # a no-op once it has exited
        proc.wait(COMMAND_TIMEOUT_S)
        os.close(terminal)
    assert TOKEN.encode() not in seen
    assert stored(tmp_path) == {"github": TOKEN}


def test_secret_set_refuses_a_value_on_the_command_line_without_echoing_it(tmp_path: Path) -> None:
    done = secret(tmp_path, "set", "github", TOKEN, stdin=TOKEN)
    assert done.returncode == 2
    assert "never takes the value on the command line" in done.stderr and "Tip:" in done.stderr
    assert TOKEN not in done.stdout + done.stderr
    assert stored(tmp_path) == {}


@pytest.mark.parametrize("piped", ["", "\n"])
def test_secret_set_refuses_an_empty_value(tmp_path: Path, piped: str) -> None:
    done = secret(tmp_path, "set", "github", stdin=piped)
    assert done.returncode == 3
    assert "the value is empty" in done.stderr and "Tip:" in done.stderr
    assert stored(tmp_path) == {}


def test_secret_set_warns_that_a_short_value_is_not_redacted(tmp_path: Path) -> None:
    done = secret(tmp_path, "set", "pin", stdin="1234")
    assert done.returncode == 0
    assert "shorter than 8 characters" in done.stderr and "not redacted" in done.stderr
    assert stored(tmp_path) == {"pin": "1234"}


def test_secret_list_shows_names_times_users_and_missing_ones_never_values(tmp_path: Path) -> None:
    write_profile(tmp_path, "github", {"GITHUB_TOKEN": "keyring:github", "MODE": "env:CI_MODE"})
    write_profile(tmp_path, "search", {"API_KEY": "keyring:brave", "OTHER": "keyring:github"})
    assert secret(tmp_path, "set", "github", stdin=TOKEN).returncode == 0
    assert secret(tmp_path, "set", "unused", stdin=TOKEN + "-2").returncode == 0
    # Listing needs no keyring: a failing backend changes nothing.
    done = secret(tmp_path, "list", backend="keyring.backends.fail.Keyring")
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split(maxsplit=1)[1] for line in done.stdout.splitlines()[1:] if line.strip()}
    assert rows["github"].endswith("github, search")
    assert rows["github"][:4].isdigit()  # the year it was set
    assert rows["brave"].startswith("missing") and rows["brave"].endswith("search")
    assert rows["unused"].endswith("-")
    assert TOKEN not in done.stdout + done.stderr


def test_secret_rm_removes_the_secret_and_a_second_rm_is_an_error(tmp_path: Path) -> None:
    assert secret(tmp_path, "set", "github", stdin=TOKEN).returncode == 0
    done = secret(tmp_path, "rm", "github")
    assert done.returncode == 0, done.stderr
    assert stored(tmp_path) == {}
    assert "github" not in json.loads((tmp_path / "config" / "secrets.json").read_text())["secrets"]
    again = secret(tmp_path, "rm", "github")
    assert again.returncode == 3
    assert "no secret named 'github'" in again.stderr and "Tip: `mcpshield secret list`" in again.stderr


def test_secret_rm_notes_the_profiles_that_still_use_it(tmp_path: Path) -> None:
    write_profile(tmp_path, "github", {"GITHUB_TOKEN": "keyring:github"})
    assert secret(tmp_path, "set", "github", stdin=TOKEN).returncode == 0
    done = secret(tmp_path, "rm", "github")
    assert done.returncode == 0
    assert "github still use it" in done.stdout


def test_doctor_accepts_the_test_backend(tmp_path: Path) -> None:
    done = secret(tmp_path, "doctor")
    assert done.returncode == 0, done.stderr
    assert "file_keyring.FileKeyring (priority 1)" in done.stdout
    assert "secure:" in done.stdout and "yes" in done.stdout
    assert "keyring answers:" in done.stdout and "yes" in done.stdout.split("keyring answers:")[1] in done.stdout
    assert str(tmp_path / "config" / "secrets.json") in done.stdout
    assert "DBUS_SESSION_BUS_ADDRESS" in done.stdout


@pytest.mark.parametrize("refused", ["keyring.backends.fail.Keyring", "keyring.backends.null.Keyring"])
def test_doctor_refuses_failing_and_null_backends_and_says_how_to_get_a_real_one(tmp_path: Path, refused: str) -> None:
    done = secret(tmp_path, "doctor", backend=refused)
    assert done.returncode == 3
    assert refused in done.stdout and "no: " in done.stdout.split("secure:")[1] in done.stdout
    assert f"mcpshield: the keyring backend {refused} is refused" in done.stderr
    tip = done.stderr.split("Tip: ", 1)[1]
    assert "gnome-keyring" in tip and "keyrings.cryptfile" in tip
    # They keep nothing, so the opt-in for insecure backends does not help, and is not offered.
    assert "MCPSHIELD_INSECURE_KEYRING" not in tip
    opted_in = secret(tmp_path, "doctor", backend=refused, MCPSHIELD_INSECURE_KEYRING="1")
    assert opted_in.returncode == 3 and "cannot make a backend that keeps nothing usable" in opted_in.stderr


def test_doctor_refuses_a_backend_keyring_does_not_recommend_unless_the_user_opts_in(tmp_path: Path) -> None:
    refused = secret(tmp_path, "doctor", backend="file_keyring.LowPriorityKeyring")
    assert refused.returncode == 3
    assert "its priority is 0" in refused.stderr and "MCPSHIELD_INSECURE_KEYRING=1" in refused.stderr
    done = secret(tmp_path, "doctor", backend="file_keyring.LowPriorityKeyring", MCPSHIELD_INSECURE_KEYRING="1")
    assert done.returncode == 0, done.stderr
    assert "accepted because MCPSHIELD_INSECURE_KEYRING=1" in done.stdout


def test_secret_set_refuses_an_insecure_backend(tmp_path: Path) -> None:
    done = secret(tmp_path, "set", "github", stdin=TOKEN, backend="keyring.backends.null.Keyring")
    assert done.returncode == 3
    assert "the keyring backend keyring.backends.null.Keyring is refused" in done.stderr
    assert not (tmp_path / "config" / "secrets.json").exists()
