"""Starting the server and making sure that, however mcpshield ends, nothing of it outlives it.

The server is started by the reaper (see `reaper`), a forked helper in a session of its own
that adopts the server's orphans and ends the whole tree when mcpshield releases it or dies.
The server itself runs in a session and process group of its own.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from mcpshield import reaper
from mcpshield.errors import LaunchError, UnsupportedPlatform
from mcpshield.fdio import enlarge_pipe

#: Variables a server needs to run like it would from the user's shell and nothing more:
#: no cloud credentials, tokens or session buses leak into it by accident.
ENV_KEEP: Final = (
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "TMPDIR", "TZ",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS",
)  # fmt: skip
#: Locale variables are kept by prefix (LC_ALL, LC_CTYPE, ...).
ENV_KEEP_PREFIXES: Final = ("LC_",)
#: Bound on the reaper reporting that the server started (a fork and an exec take milliseconds).
REAPER_START_BOUND_S: Final = 10.0
#: Bound on the reaper's final sweep as seen from mcpshield (its own bound is shorter).
REAPER_EXIT_BOUND_S: Final = 3.0
_REAPER_POLL_S: Final = 0.005


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """What to start: the argv, its full environment, its working directory."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str | None = None
    #: Kill the whole tree when its resident memory passes this many MiB (0: no limit).
    memory_mb: int = 0


def minimal_env(parent: Mapping[str, str], extra: Mapping[str, str | None]) -> dict[str, str]:
    """The server's environment: the kept variables, plus `extra` (a None value: copy the parent's)."""
    env = {k: v for k, v in parent.items() if k in ENV_KEEP or k.startswith(ENV_KEEP_PREFIXES)}
    for name, value in extra.items():
        if value is not None:
            env[name] = value
        elif name in parent:
            env[name] = parent[name]
    return env


def resolve_command(argv: tuple[str, ...], env: Mapping[str, str]) -> tuple[str, ...]:
    """argv with its program resolved on the server's PATH; a LaunchError if it cannot run."""
    program = argv[0]
    found = shutil.which(program, path=env.get("PATH", os.defpath))
    if found is None:
        if os.sep in program and os.path.exists(program):
            raise LaunchError(
                f"cannot start {program!r}: it is not executable",
                f"make it executable (chmod +x {program}) or name its interpreter first",
                exit_code=126,
            )
        raise LaunchError(
            f"cannot start {program!r}: not found on PATH",
            "use the absolute path (`which " + program + "` in your shell): GUI clients start "
            "servers with a minimal PATH",
        )
    return (found, *argv[1:])


class Child:
    """The running server, started through the reaper: its pipes, its process group, its exit."""

    def __init__(self, spec: LaunchSpec) -> None:
        if sys.platform == "win32":
            raise UnsupportedPlatform(
                "mcpshield run does not support Windows yet",
                "run the server directly for now, or use WSL",
            )
        argv = resolve_command(spec.argv, spec.env)
        stdin_r, self.stdin_fd = os.pipe()
        self.stdout_fd, stdout_w = os.pipe()
        self.stderr_fd, stderr_w = os.pipe()
        self._status_fd, status_w = os.pipe()
        control_r, self._control_fd = os.pipe()
        self.reaper_pid = os.fork()
        if self.reaper_pid == 0:  # pragma: no cover - the forked reaper never returns
            reaper.run(
                argv,
                spec.env,
                spec.cwd,
                server_fds=(stdin_r, stdout_w, stderr_w),
                status_fd=status_w,
                control_fd=control_r,
                memory_mb=spec.memory_mb,
            )
        for fd in (stdin_r, stdout_w, stderr_w, status_w, control_r):
            os.close(fd)
        self._status = b""
        self._returncode: int | None = None
        #: The tree's resident MiB when the reaper killed it for passing its memory limit.
        self.memory_killed_mib: int | None = None
        self.pid = self._await_start(argv[0])
        os.set_blocking(self._status_fd, False)
        enlarge_pipe(self.stdin_fd)
        enlarge_pipe(self.stdout_fd)

    def _await_start(self, program: str) -> int:
        """Reads the reaper's first word: the server's pid, or why it could not start."""
        line = b""
        deadline = time.monotonic() + REAPER_START_BOUND_S
        while b"\n" not in line:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._status_fd], [], [], left)[0]:
                break  # a launcher that says nothing in time is treated as dead
            chunk = os.read(self._status_fd, 256)
            if not chunk:
                break
            line += chunk
        first, _, rest = line.partition(b"\n")
        self._status = rest
        word, _, detail = first.decode("utf-8", "replace").partition(" ")
        if word == "pid":
            return int(detail)
        self.close()
        for fd in (self.stdin_fd, self.stdout_fd, self.stderr_fd):
            os.close(fd)
        why = detail.partition(" ")[2] if word == "error" else "the launcher died"
        raise LaunchError(
            f"cannot start {program!r}: {why}", "check the command runs on its own in a terminal", exit_code=126
        )

    @property
    def exit_fd(self) -> int:
        """Becomes readable when the server exits (then `returncode` is set)."""
        return self._status_fd

    @property
    def returncode(self) -> int | None:
        """The server's exit code as subprocess reports it (-N: signal N); None while it runs."""
        if self._returncode is None:
            self._read_status()
        return self._returncode

    def _read_status(self) -> None:
        try:
            chunk = os.read(self._status_fd, 256)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            # The reaper died without reporting an exit: nothing can wait for the server now.
            self.signal_group(signal.SIGKILL)
            self._returncode = -signal.SIGKILL
            return
        self._status += chunk
        for line in self._status.split(b"\n")[:-1]:  # complete lines only
            if line.startswith(b"exit "):
                self._returncode = int(line[5:])
            elif line.startswith(b"memory "):
                self.memory_killed_mib = int(line[7:])

    def signal_group(self, sig: int) -> None:
        """Signals the server's process group (its pid: it leads a session of its own)."""
        if self._returncode is not None:
            return  # reaped: its number may already name somebody else's group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def close(self) -> None:
        """Has the reaper kill whatever is left of the server's tree, and waits for it (bounded).
        Idempotent."""
        if self._control_fd < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self._control_fd, reaper.RELEASE)
        os.close(self._control_fd)
        self._control_fd = -1
        deadline = time.monotonic() + REAPER_EXIT_BOUND_S
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(self.reaper_pid, os.WNOHANG)[0] == 0:
                    time.sleep(_REAPER_POLL_S)
                    continue
            break
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.reaper_pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.reaper_pid, 0)
        with contextlib.suppress(OSError):
            os.close(self._status_fd)


def exit_status(returncode: int) -> int:
    """The status a shell would report: the code, or 128 + the signal that killed it."""
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with status {returncode}"


def parse_env_flags(flags: Iterable[str]) -> dict[str, str | None]:
    """`--env NAME` copies NAME from mcpshield's environment; `--env NAME=VALUE` sets it."""
    extra: dict[str, str | None] = {}
    for flag in flags:
        name, sep, value = flag.partition("=")
        extra[name] = value if sep else None
    return extra
