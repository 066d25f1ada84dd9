"""What this machine can enforce: the probe tries bubblewrap for real, names the reason when it
fails, caches its answer until something it depends on changes; `choose` picks the strongest
backend that works and names what it cannot enforce, with the fix."""

from __future__ import annotations

import json
import stat
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import sandbox_unavailable

from mcpshield.sandbox import landlock, probe, probecache, seccomp
from mcpshield.sandbox.probe import (
    FIX_APPARMOR,
    FIX_CONTAINER,
    FIX_LANDLOCK,
    FIX_MAX_USERNS,
    FIX_USERNS_CLONE,
    FIX_WINDOWS,
    INSTALL_BWRAP,
    Capabilities,
    choose,
    diagnose,
    try_bwrap,
)
from mcpshield.sandbox.spec import SandboxSpec

LINUX = Capabilities("linux", "6.18", 1000, "/usr/bin/bwrap", "0.8.0", True, landlock_abi=7, seccomp=True)
NO_BWRAP = replace(LINUX, bwrap_works=False, bwrap_problem="bwrap failed", bwrap_fix=FIX_APPARMOR)
MAC = Capabilities("darwin", "24.0", 501, sandbox_exec=True)
OFFLINE = SandboxSpec(network=False)
HOSTS = SandboxSpec(network=("example.org",))
ONLINE = SandboxSpec(network=True)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MCPSHIELD_CACHE_DIR", str(tmp_path))
    return tmp_path / probecache.CACHE_NAME


# --- choose ------------------------------------------------------------------------------------


def test_auto_takes_bubblewrap_where_it_works() -> None:
    for spec in (OFFLINE, HOSTS, ONLINE):
        choice = choose(spec, LINUX)
        assert (choice.backend, dict(choice.missing), choice.bwrap) == ("bubblewrap", {}, "/usr/bin/bwrap")
    assert choose(OFFLINE, LINUX).landlock_abi == 7  # for Landlock inside bubblewrap


def test_auto_falls_back_to_landlock_with_seccomp_when_bubblewrap_fails() -> None:
    for spec in (OFFLINE, ONLINE):
        choice = choose(spec, NO_BWRAP)
        assert (choice.backend, dict(choice.missing)) == ("landlock", {})


def test_a_host_list_under_landlock_is_only_a_port_fence_so_it_counts_as_missing() -> None:
    choice = choose(HOSTS, NO_BWRAP)
    assert (choice.backend, dict(choice.missing)) == ("landlock", {"network": probe.FIX_PORT_FENCE})


def test_landlock_without_tcp_rules_cannot_enforce_a_host_list() -> None:
    old = replace(NO_BWRAP, landlock_abi=3)
    assert dict(choose(OFFLINE, old).missing) == {}  # seccomp refuses inet sockets
    assert set(choose(HOSTS, old).missing) == {"network"}
    assert "ABI 4" in choose(HOSTS, old).missing["network"]


def test_landlock_before_abi_3_cannot_keep_files_from_being_emptied_so_the_filesystem_is_missing() -> None:
    old = replace(NO_BWRAP, landlock_abi=2)
    assert choose(ONLINE, old).backend == "landlock"
    assert dict(choose(ONLINE, old).missing) == {"filesystem": probe.FIX_TRUNCATE}


def test_landlock_without_seccomp_or_tcp_rules_cannot_enforce_network_false() -> None:
    bare = replace(NO_BWRAP, landlock_abi=3, seccomp=False)
    choice = choose(OFFLINE, bare)
    assert choice.backend == "landlock"
    assert set(choice.missing) == {"network"}
    assert dict(choose(ONLINE, bare).missing) == {}


def test_nothing_working_leaves_filesystem_and_network_missing_with_every_fix() -> None:
    nothing = replace(NO_BWRAP, landlock_abi=0)
    choice = choose(HOSTS, nothing)
    assert choice.backend == "none"
    assert set(choice.missing) == {"filesystem", "network"}  # rlimits still hold
    assert FIX_APPARMOR in choice.missing["filesystem"] and FIX_LANDLOCK in choice.missing["filesystem"]
    assert set(choose(ONLINE, nothing).missing) == {"filesystem"}


def test_a_named_backend_that_does_not_work_here_is_not_replaced_by_another() -> None:
    choice = choose(replace(OFFLINE, backend="bubblewrap"), NO_BWRAP)
    assert choice.backend == "none"
    assert choice.missing == {"filesystem": f"bwrap failed: {FIX_APPARMOR}", "network": f"bwrap failed: {FIX_APPARMOR}"}
    assert "macOS only" in choose(replace(OFFLINE, backend="seatbelt"), LINUX).missing["filesystem"]
    assert choose(replace(OFFLINE, backend="landlock"), LINUX).backend == "landlock"


def test_backend_none_enforces_nothing_but_the_limits() -> None:
    choice = choose(replace(OFFLINE, backend="none"), LINUX)
    assert choice.backend == "none"
    assert set(choice.missing) == {"filesystem", "network"}


def test_macos_gets_seatbelt_where_sandbox_exec_is() -> None:
    assert (choose(HOSTS, MAC).backend, dict(choose(HOSTS, MAC).missing)) == ("seatbelt", {})
    missing = choose(HOSTS, replace(MAC, sandbox_exec=False)).missing
    assert set(missing) == {"filesystem", "network"} and "sandbox-exec" in missing["filesystem"]


def test_windows_refuses_filesystem_and_network_but_keeps_limits() -> None:
    choice = choose(HOSTS, Capabilities("win32", "10", None))
    assert choice.backend == "none"
    assert choice.missing == {"filesystem": FIX_WINDOWS, "network": FIX_WINDOWS}
    assert "best_effort" in FIX_WINDOWS


# --- diagnose ----------------------------------------------------------------------------------


def test_apparmors_userns_restriction_is_recognised() -> None:
    restricted = {"kernel.apparmor_restrict_unprivileged_userns": 1}
    assert diagnose("bwrap: setting up uid map: Permission denied\n", {}, 1000)[1] == FIX_APPARMOR
    assert diagnose("bwrap: loopback: Failed RTM_NEWADDR: Operation not permitted", {}, 1000)[1] == FIX_APPARMOR
    problem, fix = diagnose("bwrap: something else", restricted, 1000)
    assert fix == FIX_APPARMOR and "something else" in problem


def test_disabled_user_namespaces_are_recognised() -> None:
    assert diagnose("bwrap: Creating new namespace failed", {"user.max_user_namespaces": 0}, 0)[1] == FIX_MAX_USERNS
    message = "bwrap: No permissions to creating new namespace, likely because the kernel does not allow it"
    assert diagnose(message, {"kernel.unprivileged_userns_clone": 0}, 1000)[1] == FIX_USERNS_CLONE
    assert diagnose(message, {}, 1000)[1] == FIX_USERNS_CLONE


def test_a_container_without_namespaces_is_recognised() -> None:
    problem, fix = diagnose("bwrap: Creating new namespace failed: Operation not permitted\n", {}, 0)
    assert fix == FIX_CONTAINER
    assert "Operation not permitted" in problem


def test_an_unknown_failure_quotes_bwraps_last_line() -> None:
    problem, fix = diagnose("warning\nbwrap: Can't mount proc on /newroot/proc: Device busy\n", {}, 0)
    assert problem.endswith("Can't mount proc on /newroot/proc: Device busy")
    assert "bwrap" in fix


def test_a_failing_bwrap_is_diagnosed_from_what_it_prints(tmp_path: Path) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(stat.S_IRWXU)
    works, problem, fix = try_bwrap(str(fake), "0.9.0", {}, 1000)
    assert not works
    assert "uid map" in problem and fix == FIX_APPARMOR


def test_a_missing_or_too_old_bubblewrap_says_to_install_it() -> None:
    assert try_bwrap(None, "", {}, 0) == (False, "bubblewrap is not installed", INSTALL_BWRAP)
    works, problem, fix = try_bwrap("/usr/bin/bwrap", "0.4.1", {}, 0)
    assert not works and "too old" in problem and fix == INSTALL_BWRAP


# --- probing this machine, and the cache --------------------------------------------------------


def test_this_machine_is_probed_for_real(cache: Path) -> None:
    caps = probe.probe(refresh=True)
    assert caps.platform == ("linux" if sys.platform.startswith("linux") else sys.platform)
    assert caps.landlock_abi == landlock.abi_version()
    assert caps.seccomp == seccomp.available()
    if caps.bwrap is None:
        sandbox_unavailable("bubblewrap is not installed")
    if not caps.bwrap_works:
        sandbox_unavailable(f"bubblewrap does not work here: {caps.bwrap_problem}")
    assert caps.bwrap_version and caps.bwrap_problem == ""


def test_the_answer_is_cached_and_reused(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def fake() -> Capabilities:
        calls.append(1)
        return LINUX

    monkeypatch.setattr(probe, "probe_now", fake)
    assert probe.probe() == LINUX
    assert probe.probe() == LINUX
    assert len(calls) == 1
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert json.loads(cache.read_text())["answer"]["bwrap"] == "/usr/bin/bwrap"
    assert probe.probe(refresh=True) == LINUX
    assert len(calls) == 2


def test_a_changed_key_or_a_corrupt_cache_is_probed_again(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([LINUX, NO_BWRAP, MAC])
    monkeypatch.setattr(probe, "probe_now", lambda: next(answers))
    assert probe.probe() == LINUX
    stored = json.loads(cache.read_text())
    stored["key"]["kernel"] = "another"
    cache.write_text(json.dumps(stored))
    assert probe.probe() == NO_BWRAP
    cache.write_text('{"key": ')
    assert probe.probe() == MAC


def test_a_cache_with_a_wrong_field_is_not_trusted(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([LINUX, NO_BWRAP])
    monkeypatch.setattr(probe, "probe_now", lambda: next(answers))
    probe.probe()
    stored = json.loads(cache.read_text())
    stored["answer"]["bwrap_works"] = "yes"
    cache.write_text(json.dumps(stored))
    assert probe.probe() == NO_BWRAP


def test_an_unwritable_cache_only_costs_a_probe_and_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MCPSHIELD_CACHE_DIR", str(blocker))
    monkeypatch.setattr(probe, "probe_now", lambda: LINUX)
    assert probe.probe() == LINUX
    assert "cannot cache the sandbox probe" in capsys.readouterr().err
