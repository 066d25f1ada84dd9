"""The reaper: a forked helper that starts the server, outlives a SIGKILL of mcpshield, and
ends the server's whole tree when mcpshield goes away.

    mcpshield ──fork──▶ reaper (own session, child subreaper) ──spawn──▶ server ──▶ ...

The reaper leaves mcpshield's session, so a client killing mcpshield's process group spares
it. It is a child subreaper (Linux), so every descendant the server orphans — even one that
started a session of its own, as browsers launched by automation servers do — is re-parented
to it and can be found and killed. It talks to mcpshield over two pipes:

- status (reaper → mcpshield), lines: `pid N` once the server runs, `error ERRNO TEXT` if it
  could not start, `memory MIB` when the tree passed its memory limit and is being killed,
  `exit RC` when it exits (RC as subprocess reports it: -N for signal N);
- control (mcpshield → reaper): the byte `R` asks it to kill whatever is left and exit; EOF
  without it means mcpshield died: SIGTERM the server's group, wait, then SIGKILL everything.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Final, NoReturn

#: How long the server's group gets between SIGTERM and SIGKILL when mcpshield died.
ORPHAN_TERM_GRACE_S: Final = 1.0
#: Bound on killing and reaping the rest of the tree; processes that fork while being killed
#: are caught by the next round.
SWEEP_BOUND_S: Final = 2.0
#: How often the tree's resident memory is summed when a limit is set: a tree that grows
#: faster than this can overshoot by what it allocates in one interval.
MEMORY_POLL_S: Final = 0.25
RELEASE: Final = b"R"
_PR_SET_CHILD_SUBREAPER: Final = 36


def run(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str | None,
    *,
    server_fds: tuple[int, int, int],
    status_fd: int,
    control_fd: int,
    memory_mb: int = 0,
) -> NoReturn:  # pragma: no cover - runs in the forked reaper, observed through its effects
    """The forked reaper's whole life; never returns."""
    try:
        os.setsid()
        _keep_only({*server_fds, status_fd, control_fd})
        _become_subreaper()
        wake = _wake_on_sigchld()
        try:
            server = subprocess.Popen(
                list(argv),
                stdin=server_fds[0],
                stdout=server_fds[1],
                stderr=server_fds[2],
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            _say(status_fd, f"error {exc.errno or 0} {exc.strerror or exc}")
            os._exit(0)
        for fd in server_fds:
            os.close(fd)
        # Only now: ignored signals would be inherited by the server through exec.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_IGN)
        _say(status_fd, f"pid {server.pid}")
        _serve(server.pid, status_fd, control_fd, wake, memory_mb)
    finally:
        os._exit(0)


def _serve(server_pid: int, status_fd: int, control_fd: int, wake: int, memory_mb: int) -> None:  # pragma: no cover
    selector = selectors.DefaultSelector()
    selector.register(control_fd, selectors.EVENT_READ)
    selector.register(wake, selectors.EVENT_READ)
    server_alive = True
    while True:
        if server_alive and _reap(server_pid, status_fd):
            server_alive = False
        if server_alive and memory_mb and _over_memory(memory_mb, status_fd):
            _kill_tree(server_pid, status_fd)  # reports the server's exit as it reaps it
            server_alive = False
        for key, _ in selector.select(MEMORY_POLL_S if memory_mb and server_alive else None):
            if key.fd == wake:
                _drain(wake)
                continue
            command = os.read(control_fd, 16)
            if RELEASE not in command and server_alive:
                # mcpshield is gone without a word: give the server the chance it would have had.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(server_pid, signal.SIGTERM)
                server_alive = not _wait_for(server_pid, status_fd, wake, ORPHAN_TERM_GRACE_S)
            _kill_tree(server_pid if server_alive else None, status_fd)
            return


def _reap(server_pid: int, status_fd: int) -> bool:  # pragma: no cover
    """Collects every exited child; True once the server itself was among them."""
    server_gone = False
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return server_gone
        if pid == 0:
            return server_gone
        if pid == server_pid:
            _say(status_fd, f"exit {os.waitstatus_to_exitcode(status)}")
            server_gone = True


def _over_memory(limit_mb: int, status_fd: int) -> bool:  # pragma: no cover
    """Whether the reaper's descendants together hold more than `limit_mb` MiB resident; says so
    on the status pipe when they do."""
    import psutil

    total = 0
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    if total <= limit_mb * 1024 * 1024:
        return False
    _say(status_fd, f"memory {total // (1024 * 1024)}")
    return True


def _wait_for(server_pid: int, status_fd: int, wake: int, bound: float) -> bool:  # pragma: no cover
    deadline = time.monotonic() + bound
    while not _reap(server_pid, status_fd):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        _wait_readable(wake, left)
        _drain(wake)
    return True


def _kill_tree(server_group: int | None, status_fd: int) -> None:  # pragma: no cover
    """SIGKILLs the server's group and every descendant of the reaper, and reaps them."""
    if server_group is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server_group, signal.SIGKILL)
    import psutil

    deadline = time.monotonic() + SWEEP_BOUND_S
    me = psutil.Process()
    while time.monotonic() < deadline:
        left = me.children(recursive=True)
        if not left:
            break
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        _reap(server_group or -1, status_fd)
        time.sleep(0.005)
    _reap(server_group or -1, status_fd)


def _wait_readable(fd: int, timeout: float) -> None:  # pragma: no cover
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        selector.select(timeout)


def _wake_on_sigchld() -> int:  # pragma: no cover
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd)
    signal.signal(signal.SIGCHLD, lambda _sig, _frame: None)
    return read_fd


def _drain(fd: int) -> None:  # pragma: no cover
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


def _say(fd: int, line: str) -> None:  # pragma: no cover
    with contextlib.suppress(OSError):
        os.write(fd, line.encode("utf-8", "replace") + b"\n")


def _keep_only(keep: set[int]) -> None:  # pragma: no cover
    """Drops every inherited fd but `keep`: above all the client's pipes and mcpshield's ends
    of the server's pipes, which would otherwise never see EOF."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _max_fd())


def _max_fd() -> int:  # pragma: no cover
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (ValueError, OSError):
        return 1024


def _become_subreaper() -> None:  # pragma: no cover
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
