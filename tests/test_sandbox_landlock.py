"""Landlock for real: a process confined by `python -m mcpshield.sandbox.inner` can touch only the
trees and TCP ports its plan gives it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from conftest import sandbox_unavailable

from mcpshield.sandbox import landlock
from mcpshield.sandbox.spec import INNER_PLAN_ENV

#: Bound on one sandboxed Python start-up and the few syscalls it tries.
RUN_TIMEOUT_S: Final = 30.0


def needs_abi(version: int) -> None:
    if landlock.abi_version() < version:
        sandbox_unavailable(f"this kernel lacks Landlock ABI {version}")


def run_plan(**plan: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, INNER_PLAN_ENV: json.dumps(plan)}
    argv = [sys.executable, "-m", "mcpshield.sandbox.inner"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)


def outcomes(*statements: str, **plan: Any) -> list[str]:
    """Runs each statement in a sandboxed Python: "allowed", or "refused" on a PermissionError."""
    tries = [f"try:\n    {s}\n    print('allowed')\nexcept PermissionError:\n    print('refused')" for s in statements]
    result = run_plan(argv=[sys.executable, "-I", "-c", "\n".join(["import os, signal, socket", *tries])], **plan)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def write(path: Path) -> str:
    return f"open({str(path)!r}, 'w').close()"


def read(path: Path) -> str:
    return f"open({str(path)!r}).read()"


def listing(path: Path) -> str:
    return f"os.listdir({str(path)!r})"


def connect(port: int) -> str:
    return f"socket.create_connection(('127.0.0.1', {port}), timeout=10).close()"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home folder with a secret in .ssh, a note beside it, and a project."""
    (tmp_path / "home" / ".ssh").mkdir(parents=True)
    (tmp_path / "home" / ".ssh" / "id_ed25519").write_text("secret")
    (tmp_path / "home" / "notes.txt").write_text("notes")
    (tmp_path / "home" / "project" / "src").mkdir(parents=True)
    (tmp_path / "home" / "project" / ".env").write_text("TOKEN=secret")
    return tmp_path / "home"


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


def test_this_machine_reports_a_landlock_abi() -> None:
    needs_abi(1)
    assert landlock.abi_version() >= 1


def test_writing_inside_a_write_tree_works_and_outside_it_fails(home: Path, tmp_path: Path) -> None:
    needs_abi(1)
    assert outcomes(
        write(home / "project" / "src" / "new.py"),
        write(tmp_path / "elsewhere.txt"),
        write(home / "notes.txt"),
        landlock_read=None,
        landlock_write=[str(home / "project")],
    ) == ["allowed", "refused", "refused"]


def test_a_denied_folders_files_are_unreadable_while_its_siblings_stay_readable(home: Path) -> None:
    """Its ancestors stay listable, so (unlike under bubblewrap) its names show: Landlock can
    only grant, and listing home means listing beneath it."""
    needs_abi(1)
    assert outcomes(
        read(home / ".ssh" / "id_ed25519"),
        f"open({str(home / '.ssh' / 'planted')!r}, 'w')",
        listing(home),
        listing(home / ".ssh"),
        read(home / "notes.txt"),
        listing(home / "project"),
        landlock_read=None,
        landlock_deny=[str(home / ".ssh")],
    ) == ["refused", "refused", "allowed", "allowed", "allowed", "allowed"]


def test_a_denied_file_in_a_write_tree_is_neither_readable_nor_writable(home: Path) -> None:
    needs_abi(1)
    assert outcomes(
        read(home / "project" / ".env"),
        write(home / "project" / ".env"),
        write(home / "project" / "src" / "main.py"),
        landlock_read=None,
        landlock_write=[str(home / "project")],
        landlock_deny=[str(home / "project" / ".env")],
    ) == ["refused", "refused", "allowed"]


def test_a_denied_path_that_does_not_exist_cannot_be_created(home: Path) -> None:
    needs_abi(1)
    assert outcomes(
        f"os.mkdir({str(home / '.aws')!r})",
        write(home / "project" / "new.txt"),
        landlock_read=None,
        landlock_write=[str(home)],
        landlock_deny=[str(home / ".aws")],
    ) == ["refused", "allowed"]


def test_a_symlink_to_a_denied_folder_does_not_lead_into_it(home: Path) -> None:
    needs_abi(1)
    (home / "project" / "keys").symlink_to(home / ".ssh")
    assert outcomes(
        read(home / "project" / "keys" / "id_ed25519"),
        landlock_read=None,
        landlock_deny=[str(home / ".ssh")],
    ) == ["refused"]


def test_only_the_read_trees_are_readable_and_none_of_them_writable(tmp_path: Path) -> None:
    needs_abi(1)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("a")
    (tmp_path / "other.txt").write_text("b")
    python = os.path.dirname(os.path.realpath(sys.executable))
    system = ["/usr", "/lib", "/lib64", "/bin", "/etc", sys.prefix, sys.base_prefix, python]
    assert outcomes(
        read(tmp_path / "docs" / "a.txt"),
        read(tmp_path / "other.txt"),
        write(tmp_path / "docs" / "a.txt"),
        landlock_read=[*system, str(tmp_path / "docs")],
    ) == ["allowed", "refused", "refused"]


def test_no_tcp_port_allowed_means_no_tcp_connect(listener: socket.socket) -> None:
    needs_abi(landlock.TCP_ABI)
    port = listener.getsockname()[1]
    assert outcomes(connect(port), tcp_connect_ports=[]) == ["refused"]


def test_tcp_connect_reaches_the_allowed_port_and_no_other(listener: socket.socket) -> None:
    needs_abi(landlock.TCP_ABI)
    with socket.create_server(("127.0.0.1", 0)) as other:
        allowed, refused = listener.getsockname()[1], other.getsockname()[1]
        assert outcomes(connect(allowed), connect(refused), tcp_connect_ports=[allowed]) == ["allowed", "refused"]


def test_the_sandbox_cannot_signal_a_process_outside_it() -> None:
    needs_abi(landlock.SCOPE_ABI)
    with subprocess.Popen(["cat"], stdin=subprocess.PIPE) as outsider:
        try:
            kill = f"os.kill({outsider.pid}, signal.SIGTERM)"
            assert outcomes(kill, tcp_connect_ports=[]) == ["refused"]
            assert outsider.poll() is None
        finally:
            outsider.kill()


def test_a_denied_path_is_carved_out_of_each_of_its_ancestors_which_stay_listable(tmp_path: Path) -> None:
    for folder in ("a/b/secret", "a/b/c", "a/d"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "a" / "link").symlink_to(tmp_path / "a" / "b" / "secret")
    pairs = landlock.rule_paths([str(tmp_path / "a")], [], [str(tmp_path / "a" / "b" / "secret")])
    a, b = tmp_path / "a", tmp_path / "a" / "b"
    assert pairs == [(str(a), "list"), (str(b), "list"), (str(b / "c"), "read"), (str(a / "d"), "read")]


def test_a_tree_inside_a_denied_path_gets_no_rule(tmp_path: Path) -> None:
    (tmp_path / "secret" / "inner").mkdir(parents=True)
    assert landlock.rule_paths([], [str(tmp_path / "secret" / "inner")], [str(tmp_path / "secret")]) == []


def test_missing_trees_get_no_rule(tmp_path: Path) -> None:
    assert landlock.rule_paths([str(tmp_path / "missing")], [str(tmp_path / "gone")], []) == []


def test_each_abi_handles_the_rights_it_knows() -> None:
    assert landlock.fs_rights(0) == 0
    assert not landlock.fs_rights(1) & landlock.FS_REFER
    assert landlock.fs_rights(2) & landlock.FS_REFER
    assert not landlock.fs_rights(2) & landlock.FS_TRUNCATE
    assert landlock.fs_rights(3) & landlock.FS_TRUNCATE
    assert not landlock.fs_rights(4) & landlock.FS_IOCTL_DEV
    assert landlock.fs_rights(5) & landlock.FS_IOCTL_DEV


def test_a_port_outside_the_tcp_range_is_refused_before_anything_changes() -> None:
    with pytest.raises(ValueError, match="65535"):
        landlock.restrict(None, [], [], [70000])


def test_no_new_privs_is_set_with_the_restriction() -> None:
    needs_abi(1)
    result = run_plan(argv=["grep", "NoNewPrivs", "/proc/self/status"], landlock_read=["/"])
    assert result.stdout.split() == ["NoNewPrivs:", "1"], result.stderr


def test_the_sandboxed_process_can_still_signal_itself() -> None:
    needs_abi(1)
    suicide = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"]
    result = run_plan(argv=suicide, landlock_read=["/"], tcp_connect_ports=[])
    assert result.returncode == -signal.SIGTERM
