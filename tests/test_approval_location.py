"""Where the approver's socket lives: a 0700 directory of this user, never anyone else's."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import platformdirs  # imported before any test changes sys.platform
import pytest

from mcpshield.approval.location import APPROVER_DIR_ENV, approver_dir, socket_path
from mcpshield.errors import ApprovalError

assert platformdirs


@pytest.fixture(autouse=True)
def no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(APPROVER_DIR_ENV, raising=False)


def test_override_directory_is_made_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(APPROVER_DIR_ENV, str(tmp_path / "a" / "b"))
    directory = approver_dir()
    assert directory == tmp_path / "a" / "b"
    assert directory.stat().st_mode & 0o777 == 0o700
    assert socket_path(directory).name == "approver.sock"


def test_an_open_directory_of_ours_is_closed_when_made_and_refused_when_only_looked_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    place = tmp_path / "run"
    place.mkdir(mode=0o755)
    place.chmod(0o755)
    monkeypatch.setenv(APPROVER_DIR_ENV, str(place))
    with pytest.raises(ApprovalError, match="other users can open it"):
        approver_dir(create=False)
    approver_dir()
    assert place.stat().st_mode & 0o777 == 0o700


def test_a_symbolic_link_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.setenv(APPROVER_DIR_ENV, str(tmp_path / "link"))
    with pytest.raises(ApprovalError, match="symbolic link") as raised:
        approver_dir()
    assert raised.value.tip


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a directory to another user")
def test_a_directory_of_another_user_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    place = tmp_path / "theirs"
    place.mkdir(mode=0o700)
    os.chown(place, 65534, 65534)
    monkeypatch.setenv(APPROVER_DIR_ENV, str(place))
    with pytest.raises(ApprovalError, match="belongs to uid 65534"):
        approver_dir()


def test_private_runtime_dir_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert approver_dir() == runtime / "mcpshield"
    assert (runtime / "mcpshield").stat().st_mode & 0o777 == 0o700


def test_runtime_dir_others_can_open_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    runtime.chmod(0o755)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "platform", "darwin")  # no /run/user to fall back on
    directory = approver_dir(create=False)
    assert not directory.is_relative_to(runtime)
    assert directory.parts[-2:] == ("mcpshield", "run")


def test_without_a_runtime_dir_the_cache_dir_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "platform", "darwin")
    directory = approver_dir()
    assert directory.parts[-2:] == ("mcpshield", "run")
    assert directory.stat().st_mode & 0o777 == 0o700


def test_a_socket_path_too_long_for_af_unix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ApprovalError, match="too long"):
        socket_path(tmp_path / ("d" * 120))
