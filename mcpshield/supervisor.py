"""Starting the server and making sure that, however mcpshield ends, nothing of it outlives it.

The server runs in a session and process group of its own; mcpshield becomes a child
subreaper so that descendants orphaned by the server are re-parented to it and can be
swept; and a forked watcher outside every client-visible process group kills the server's
group if mcpshield itself is killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

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
#: The watcher's wait between SIGTERM and SIGKILL of an orphaned server group.
WATCHER_TERM_GRACE_S: Final = 1.0
_WATCHER_POLL_S: Final = 0.02
_PR_SET_CHILD_SUBREAPER: Final = 36
#: What mcpshield writes to its watcher when it ended the server itself; EOF alone means it died.
_WATCHER_RELEASE: Final = b"R"


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """What to start: the argv, its full environment, its working directory."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str | None = None


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


def become_subreaper() -> None:
    """Adopts orphaned descendants (Linux), so a server's grandchildren can be swept."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


class Child:
    """The running server: its pipes, its process group, and the steps that end it."""

    def __init__(self, spec: LaunchSpec) -> None:
        if sys.platform == "win32":
            raise UnsupportedPlatform(
                "mcpshield run does not support Windows yet",
                "run the server directly for now, or use WSL",
            )
        argv = resolve_command(spec.argv, spec.env)
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=dict(spec.env),
                cwd=spec.cwd,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise LaunchError(
                f"cannot start {argv[0]!r}: {exc.strerror}",
                "check the command runs on its own in a terminal",
                exit_code=126,
            ) from exc
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr
        self.pid = self.proc.pid
        self.stdin_fd = self.proc.stdin.fileno()
        self.stdout_fd = self.proc.stdout.fileno()
        self.stderr_fd = self.proc.stderr.fileno()
        enlarge_pipe(self.stdin_fd)
        enlarge_pipe(self.stdout_fd)
        self._watcher_fd, self.watcher_pid = _start_watcher(self.pid)

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def exit_fd(self) -> int | None:
        """A pidfd that becomes readable when the server exits (Linux), else None."""
        try:
            return os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            return None

    def signal_group(self, sig: int) -> None:
        """Signals the server's process group (its pid: it leads a session of its own)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def sweep(self) -> None:
        """SIGKILLs what is left of the server's tree: its group, and every descendant
        re-parented to mcpshield, then reaps them."""
        self.signal_group(signal.SIGKILL)
        self.proc.poll()
        import psutil  # deferred: the sweep is the only user, and the import costs start-up time

        me = psutil.Process()
        for proc in me.children(recursive=True):
            if proc.pid == self.watcher_pid:
                continue
            with contextlib.suppress(psutil.Error):
                proc.kill()
        _reap_adopted(exclude=self.watcher_pid)

    def release_watcher(self) -> None:
        """Lets the watcher go without signalling anything: the tree is already swept, and
        the server's pid (its group id) may soon belong to someone else."""
        if self._watcher_fd < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self._watcher_fd, _WATCHER_RELEASE)
        with contextlib.suppress(OSError):
            os.close(self._watcher_fd)
        self._watcher_fd = -1
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(self.watcher_pid, 0)


def _reap_adopted(exclude: int) -> None:
    """Collects exit statuses of adopted orphans so none lingers as a zombie."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == exclude:
            continue


def _start_watcher(pgid: int) -> tuple[int, int]:
    """Forks a process that outlives a SIGKILL of mcpshield and then ends the server's group.

    It holds the read end of a pipe only mcpshield writes to; EOF means mcpshield is gone.
    It leaves mcpshield's session, so a client killing mcpshield's process group spares it.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked watcher
        _watch(read_fd, pgid)
    os.close(read_fd)
    os.set_inheritable(write_fd, False)
    return write_fd, pid


def _watch(read_fd: int, pgid: int) -> None:  # pragma: no cover - runs in the forked watcher
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.closerange(3, read_fd)
        os.closerange(read_fd + 1, _max_fd())
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if os.read(read_fd, 1) != _WATCHER_RELEASE:  # EOF: mcpshield died without releasing us
            _end_group(pgid)
    finally:
        os._exit(0)


def _end_group(pgid: int) -> None:  # pragma: no cover - runs in the forked watcher
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + WATCHER_TERM_GRACE_S
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(_WATCHER_POLL_S)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _max_fd() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (ValueError, OSError):
        return 1024


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
