"""Tier 2: however the session ends, no process of the server's tree is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from conftest import EXIT_TIMEOUT_S, LineClient, fake_argv, shield_argv, wait_all_gone

Shield = Callable[..., LineClient]


def _started_with_grandchild(shield: Shield, *flags: str, new_session: bool = False) -> tuple[LineClient, int]:
    client = shield(*fake_argv(*flags), start_new_session=True)
    client.initialize()
    client.call("g", "spawn_grandchild", {"new_session": new_session})
    grandchild = int(client.answer_for("g")["result"]["content"][0]["text"])
    return client, grandchild


def _tree(client: LineClient, grandchild: int) -> list[psutil.Process]:
    tree = client.tree()
    assert grandchild in {p.pid for p in tree}, "the grandchild should be in mcpshield's tree"
    return tree


def test_client_closing_stdin_ends_the_server_and_its_grandchildren(shield: Shield) -> None:
    client, grandchild = _started_with_grandchild(shield)
    tree = _tree(client, grandchild)
    client.close_stdin()
    assert client.wait() == 0
    assert wait_all_gone(tree) == []


def test_a_server_that_ignores_eof_is_terminated_after_the_grace(shield: Shield) -> None:
    client, grandchild = _started_with_grandchild(shield, "--linger")
    tree = _tree(client, grandchild)
    client.close_stdin()
    assert client.wait() == 128 + signal.SIGTERM
    assert wait_all_gone(tree) == []


def test_a_server_that_ignores_sigterm_is_killed(shield: Shield) -> None:
    client, grandchild = _started_with_grandchild(shield, "--linger")
    client.call("t", "ignore_term")
    client.answer_for("t")
    tree = _tree(client, grandchild)
    client.close_stdin()
    assert client.wait() == 128 + signal.SIGKILL
    assert wait_all_gone(tree) == []


def test_a_grandchild_in_a_session_of_its_own_is_swept_too(shield: Shield) -> None:
    client, grandchild = _started_with_grandchild(shield, new_session=True)
    tree = _tree(client, grandchild)
    client.close_stdin()
    assert client.wait() == 0
    assert wait_all_gone(tree) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_to_mcpshield_ends_the_whole_tree(shield: Shield, sig: signal.Signals) -> None:
    client, grandchild = _started_with_grandchild(shield, "--linger")
    tree = _tree(client, grandchild)
    client.proc.send_signal(sig)
    client.wait()
    assert wait_all_gone(tree) == []


def test_sigkill_of_mcpshield_still_ends_the_server_and_its_group(shield: Shield) -> None:
    client, grandchild = _started_with_grandchild(shield, "--linger")
    tree = _tree(client, grandchild)
    client.proc.kill()
    client.wait()
    assert wait_all_gone(tree) == []


def test_killing_the_clients_process_group_ends_everything(shield: Shield) -> None:
    # The Python SDK starts its server (here: mcpshield) in a new session and kills that group.
    client, grandchild = _started_with_grandchild(shield, "--linger")
    tree = _tree(client, grandchild)
    os.killpg(client.proc.pid, signal.SIGKILL)
    client.wait()
    assert wait_all_gone(tree) == []


def test_a_client_that_stops_reading_ends_the_session() -> None:
    proc = subprocess.Popen(
        shield_argv(*fake_argv()), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert proc.stdin and proc.stdout
        proc.stdin.write(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
        proc.stdin.flush()
        assert proc.stdout.readline() == b'{"jsonrpc":"2.0","id":1,"result":{}}\n'
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        proc.stdout.close()
        proc.stdin.write(b'{"jsonrpc":"2.0","id":2,"method":"ping"}\n')
        proc.stdin.flush()
        proc.wait(timeout=EXIT_TIMEOUT_S)
        assert wait_all_gone(tree) == []
    finally:
        proc.kill()
        proc.wait(timeout=EXIT_TIMEOUT_S)
        if proc.stdin:
            proc.stdin.close()


def test_sigkill_of_mcpshield_ends_even_a_grandchild_in_a_session_of_its_own(shield: Shield) -> None:
    # Browsers started by automation servers leave the server's group this way (detached).
    client, grandchild = _started_with_grandchild(shield, "--linger", new_session=True)
    tree = _tree(client, grandchild)
    os.killpg(client.proc.pid, signal.SIGKILL)
    client.wait()
    assert wait_all_gone(tree) == []


def test_a_server_that_cannot_be_executed_is_refused_with_a_tip(tmp_path: Path) -> None:
    script = tmp_path / "server.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    done = subprocess.run(shield_argv(str(script)), input=b"", capture_output=True, timeout=30, check=False)
    assert done.returncode == 126
    assert done.stdout == b""
    assert b"not executable" in done.stderr
    assert b"Tip:" in done.stderr


def test_a_server_whose_exec_fails_is_refused_with_the_reason(tmp_path: Path) -> None:
    binary = tmp_path / "garbage"
    binary.write_bytes(b"\x7fELF not really")
    binary.chmod(0o755)
    done = subprocess.run(shield_argv(str(binary)), input=b"", capture_output=True, timeout=30, check=False)
    assert done.returncode == 126
    assert done.stdout == b""
    assert done.stderr.decode().startswith(f"mcpshield: cannot start {str(binary)!r}: Exec format error")
