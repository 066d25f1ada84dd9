"""Tier 1: reading a path argument stays bounded whatever the model sends, over real directories."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcpshield.policy import paths
from mcpshield.policy.args import CompiledArgs, compile_conditions
from mcpshield.policy.paths import (
    MAX_PATH_BYTES,
    MAX_PATH_COMPONENTS,
    MAX_SYMLINK_HOPS,
    PathReader,
    ReadBudget,
    Unreadable,
)
from mcpshield.profile.model import ArgCondition

NFC_NAME = "caf\u00e9"
NFD_NAME = "cafe\u0301"


@pytest.fixture
def public(tmp_path: Path) -> Path:
    root = tmp_path.resolve() / "public"
    root.mkdir()
    return root


def _reader() -> PathReader:
    return PathReader(os.path.realpath, "/home/u")


def _unreadable(value: str) -> str:
    reading = _reader().readings(value)
    assert isinstance(reading, Unreadable), reading
    return reading.reason


def _allow(root: Path) -> CompiledArgs:
    return compile_conditions({"path": ArgCondition(within=(str(root),))}, "allow", home="/home/u")


def _deny(root: Path) -> CompiledArgs:
    return compile_conditions({"path": ArgCondition(not_within=(str(root),))}, "deny", home="/home/u")


def _refused_both_ways(root: Path, value: str) -> None:
    """Fail closed: an allow rule refuses the value and the matching deny rule applies to it."""
    assert _allow(root).check({"path": value}) is not None
    assert _deny(root).check({"path": value}) is None


@pytest.fixture
def scandirs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every directory the policy lists, in order: os.scandir, counted."""
    listed: list[str] = []
    real = os.scandir

    def counting(path: Any) -> Any:
        listed.append(os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", counting)
    yield listed


# -- size caps --------------------------------------------------------------------------------


def test_a_path_longer_than_the_cap_is_refused_with_the_reason(public: Path) -> None:
    value = str(public) + ("/" + "a" * 200) * 25
    assert len(value.encode()) > MAX_PATH_BYTES
    assert f"longer than {MAX_PATH_BYTES} bytes" in _unreadable(value)
    _refused_both_ways(public, value)


def test_the_length_cap_counts_bytes_not_characters(public: Path) -> None:
    value = str(public) + ("/" + "\u00e9" * 100) * 25  # about 2,600 characters, over 5,000 bytes
    assert len(value) < MAX_PATH_BYTES < len(value.encode())
    assert "bytes" in _unreadable(value)


def test_a_huge_value_is_refused_before_it_is_parsed(public: Path) -> None:
    value = "file://" + str(public) + "/%41" * 5_000_000  # 15 MB of URI
    started = time.perf_counter()
    assert f"longer than {MAX_PATH_BYTES} bytes" in _unreadable(value)
    assert time.perf_counter() - started < 0.3  # parsing 15 MB would take longer on any machine


def test_a_path_of_more_components_than_the_cap_is_refused(public: Path) -> None:
    value = str(public) + "/." * (MAX_PATH_COMPONENTS + 1) + "/missing"
    assert f"more than {MAX_PATH_COMPONENTS}" in _unreadable(value)
    _refused_both_ways(public, value)


def test_a_path_at_the_component_cap_is_read(public: Path) -> None:
    depth = MAX_PATH_COMPONENTS - (len(public.parts) - 1)  # parts[0] is "/"
    value = str(public) + "/." * (depth - 1) + "/missing"
    assert not isinstance(_reader().readings(value), Unreadable)
    assert _allow(public).check({"path": value}) is None


def test_thousands_of_existing_components_do_not_exhaust_the_stack(public: Path) -> None:
    """The Unicode walk used to recurse once per component: 2,000 of them raised RecursionError."""
    value = str(public) + "/." * 2000 + "/missing"
    _refused_both_ways(public, value)


# -- the Unicode-equivalent walk ----------------------------------------------------------------


def test_each_directory_is_listed_once_per_check(public: Path, scandirs: list[str]) -> None:
    (public / NFD_NAME).mkdir()
    for i in range(50):
        (public / f"f{i}").touch()
    value = str(public) + f"/{NFC_NAME}/.." * 40 + f"/{NFC_NAME}/new.txt"
    assert _allow(public).check({"path": value}) is None
    assert len(scandirs) <= 2, scandirs  # the root once, then the matched directory once


def test_a_walk_that_needs_more_work_than_the_budget_is_refused(public: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths, "MAX_READ_WORK", 100)
    for i in range(150):
        (public / f"f{i}").touch()
    value = str(public / NFC_NAME / "x")  # missing: the directory is scanned for an equivalent
    reason = _unreadable(value)
    assert "more than 100" in reason
    _refused_both_ways(public, value)


def test_the_budget_is_per_check_not_per_reader(public: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths, "MAX_READ_WORK", 100)
    for i in range(60):
        (public / f"f{i}").touch()
    reader = _reader()
    for _ in range(5):
        assert not isinstance(reader.readings(str(public / NFC_NAME)), Unreadable)


def test_reads_sharing_a_budget_list_each_directory_once_and_share_its_bound(
    public: Path, scandirs: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(paths, "MAX_READ_WORK", 300)
    for i in range(60):
        (public / f"f{i}").touch()
    reader, budget = _reader(), ReadBudget()
    results = [reader.readings(str(public / NFC_NAME / f"x{i}"), budget) for i in range(30)]
    assert not isinstance(results[0], Unreadable)
    assert isinstance(results[-1], Unreadable)
    assert scandirs == [str(public)]


def test_a_directory_too_large_to_scan_makes_the_path_unreadable(public: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths, "MAX_SCANNED_ENTRIES", 20)
    for i in range(30):
        (public / f"f{i}").touch()
    assert "more than 20 entries" in _unreadable(str(public / NFC_NAME))


def test_a_big_directory_and_an_adversarial_path_are_judged_quickly(public: Path) -> None:
    for i in range(3000):
        (public / f"entry-{i}").touch()
    (public / NFD_NAME).mkdir()
    value = str(public) + f"/{NFC_NAME}/.." * (MAX_PATH_COMPONENTS // 2 - 8) + "/new.txt"
    started = time.perf_counter()
    _allow(public).check({"path": value})
    assert time.perf_counter() - started < 2.0  # generous: a guard against blow-ups, not a speed target


# -- symlinks ---------------------------------------------------------------------------------


def test_a_symlink_loop_is_refused_with_a_reason_not_raised(public: Path) -> None:
    (public / "a").symlink_to("b")
    (public / "b").symlink_to("a")
    reason = _unreadable(str(public / "a" / "x"))
    assert "symlinks" in reason
    _refused_both_ways(public, str(public / "a" / "x"))


def test_a_symlink_chain_longer_than_the_os_follows_is_refused(public: Path) -> None:
    """Python 3.11's realpath recursed once per link: a chain of 1,500 raised RecursionError."""
    for i in range(1500):
        (public / f"l{i}").symlink_to(f"l{i + 1}")
    (public / "l1500").mkdir()
    assert "symlinks" in _unreadable(str(public / "l0" / "x"))
    _refused_both_ways(public, str(public / "l0" / "x"))


def test_a_chain_the_os_would_follow_is_read_through(public: Path) -> None:
    for i in range(MAX_SYMLINK_HOPS):
        (public / f"l{i}").symlink_to(f"l{i + 1}")
    (public / f"l{MAX_SYMLINK_HOPS}").mkdir()
    (public / f"l{MAX_SYMLINK_HOPS}" / "x").touch()
    os.stat(public / "l0" / "x")  # the kernel agrees it can be opened
    readings = _reader().readings(str(public / "l0" / "x"))
    assert not isinstance(readings, Unreadable) and readings is not None
    assert (str(public / f"l{MAX_SYMLINK_HOPS}" / "x"), f"which resolves to {public}/l{MAX_SYMLINK_HOPS}/x") in readings


# -- the bounded resolver reads paths as the OS does ---------------------------------------------

NAMES = st.sampled_from(["a", "b", "up", "abs", "self", "missing", "f.txt", ".", "..", ""])


@pytest.fixture
def maze(tmp_path: Path) -> Path:
    root = tmp_path.resolve() / "maze"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "f.txt").touch()
    (root / "a" / "up").symlink_to("..")
    (root / "a" / "b" / "abs").symlink_to(root / "a")
    (root / "self").symlink_to(".")
    (root / "b").symlink_to("a/b/../b")
    (root / "missing").symlink_to("nowhere/x")
    return root


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(NAMES, max_size=8))
def test_the_bounded_resolver_agrees_with_os_path_realpath(maze: Path, parts: list[str]) -> None:
    path = str(maze) + "/" + "/".join(parts)
    assert paths.realpath(path) == os.path.realpath(path)


def test_an_injected_resolver_is_still_used(public: Path) -> None:
    seen: list[str] = []

    def lexical_only(path: str) -> str:
        seen.append(path)
        return path

    PathReader(lexical_only, "/home/u").readings(str(public / "x"))
    assert seen == [str(public / "x")]
