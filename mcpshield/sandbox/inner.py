"""The in-sandbox launcher, `python -m mcpshield.sandbox.inner`: carries out the InnerPlan found in
the environment (limits, seccomp, Landlock, capabilities dropped: in that order) and execs the
server; with a forward it stays as the server's parent, relaying a loopback port to the egress
proxy's Unix socket.

Start-up time counts: this imports nothing beyond the stdlib and the sandbox's ctypes modules."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NoReturn

from mcpshield.sandbox import landlock, limits, seccomp
from mcpshield.sandbox.spec import DIMENSIONS, INNER_PLAN_ENV, Forward, InnerPlan

if TYPE_CHECKING:
    import socket
    import threading

#: The exit status when the sandbox cannot be set up (as a shell says "cannot execute").
EXIT_CANNOT_CONFINE: Final = 126
#: The exit status when the server's command is not found (as a shell says).
EXIT_NOT_FOUND: Final = 127
#: Bound on reaching the egress proxy's socket; it listens before the sandbox starts, so a slow
#: connect means it is gone.
CONNECT_TIMEOUT_S: Final = 10.0
#: Bound on connections relayed at once (two threads each); more are closed on arrival.
MAX_CONNECTIONS: Final = 256
#: Pending connections the forwarder's listener queues.
LISTEN_BACKLOG: Final = 64
#: Bytes relayed per read.
CHUNK: Final = 65536
#: What the relaying launcher passes on to the server (SIGKILL cannot be caught: the server's
#: parent-death signal covers it).
FORWARDED_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG: Final = 1

_TIP_LANDLOCK: Final = (
    "use Linux 5.13 or newer with Landlock enabled (landlock in the lsm= boot parameter), install "
    'bubblewrap, or set enforcement = "best_effort" in the profile\'s [sandbox]'
)
_TIP_TCP: Final = (
    "use Linux 6.7 or newer (Landlock ABI 4), install bubblewrap for a network namespace, or set "
    'enforcement = "best_effort" in the profile\'s [sandbox]'
)
_TIP_SECCOMP: Final = (
    'seccomp filters need Linux on x86-64 or aarch64; install bubblewrap, or set enforcement = "best_effort"'
)
_TIP_BUG: Final = "this is a bug in mcpshield: please report it with the command that started the server"


@dataclass(frozen=True, slots=True)
class Shortfall:
    """A part of the plan this machine did not enforce."""

    dimension: str
    what: str
    tip: str


def main() -> NoReturn:
    """Reads the plan from the environment (and removes it there), confines and execs."""
    try:
        plan = read_plan(os.environ)
    except (ValueError, TypeError) as exc:
        _fail(f"the sandbox plan is malformed: {exc}", _TIP_BUG)
    settle(plan, shortfalls(plan, landlock.abi_version(), seccomp.available()))
    if plan.forward is None:
        _confine_and_exec(plan)
    _fork_and_relay(plan, plan.forward)


def _fork_and_relay(plan: InnerPlan, forward: Forward) -> NoReturn:
    """Listens first (the server may connect at once), forks the server off, relays for it."""
    listener = _listen(forward)
    parent = os.getpid()
    # Held back until the relay's handlers are in place, so that none is lost to the fork.
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
    child = os.fork()
    if child == 0:
        listener.close()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)  # an exec keeps the mask
        _die_with(parent)
        _confine_and_exec(plan)
    _serve_and_mirror(listener, forward.unix_path, child)


def read_plan(environ: MutableMapping[str, str]) -> InnerPlan:
    """The plan in `environ` (removed from it); ValueError or TypeError when it is missing or
    malformed (an unknown key included)."""
    raw = environ.pop(INNER_PLAN_ENV, None)
    if raw is None:
        raise ValueError(f"${INNER_PLAN_ENV} is not set (this module is started by `mcpshield run`)")
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    forward = data.pop("forward", None)
    fields: dict[str, Any] = {key: tuple(value) if isinstance(value, list) else value for key, value in data.items()}
    plan = InnerPlan(**fields, forward=None if forward is None else Forward(**forward))
    if not plan.argv or not all(isinstance(arg, str) for arg in plan.argv):
        raise ValueError("argv must be a non-empty list of strings")
    if unknown := set(plan.required) - set(DIMENSIONS):
        raise ValueError(f"unknown dimensions required: {sorted(unknown)}")
    return plan


def shortfalls(plan: InnerPlan, abi: int, seccomp_available: bool) -> list[Shortfall]:
    """What the plan asks of the kernel that a Landlock `abi` and seccomp's availability cannot
    give. Pure: the launcher decides on it before it changes anything."""
    found: list[Shortfall] = []
    if wants_filesystem(plan) and abi < 1:
        found.append(Shortfall("filesystem", "Landlock is not available on this kernel", _TIP_LANDLOCK))
    if plan.tcp_connect_ports is not None and abi < landlock.TCP_ABI:
        what = f"Landlock ABI {abi} cannot restrict TCP connections (ABI {landlock.TCP_ABI} can)"
        found.append(Shortfall("network", what, _TIP_TCP))
    if plan.seccomp != "none" and not seccomp_available:
        found.append(Shortfall("network", f"seccomp filters are not available on {os.uname().machine}", _TIP_SECCOMP))
    return found


def wants_filesystem(plan: InnerPlan) -> bool:
    """Whether the plan restricts the filesystem: any Landlock path given. With write or deny
    paths, `landlock_read` None means "/" readable (except `landlock_deny`); with none of them,
    no Landlock filesystem rules at all."""
    return plan.landlock_read is not None or bool(plan.landlock_write) or bool(plan.landlock_deny)


def wants_network(plan: InnerPlan) -> bool:
    """Whether the plan restricts the network (Landlock TCP rules or a seccomp filter)."""
    return plan.tcp_connect_ports is not None or plan.seccomp != "none"


def settle(plan: InnerPlan, found: Iterable[Shortfall]) -> None:
    """Exits 126 with one line and a Tip if a required dimension falls short; otherwise warns
    once per dimension that does, and returns."""
    found = list(found)
    fatal = [gap for gap in found if gap.dimension in plan.required]
    if fatal:
        tips = "; ".join(dict.fromkeys(gap.tip for gap in fatal))
        _fail("; ".join(gap.what for gap in fatal), tips)
    for dimension in dict.fromkeys(gap.dimension for gap in found):
        what = "; ".join(gap.what for gap in found if gap.dimension == dimension)
        _say(f"mcpshield: sandbox: warning: {what}; {dimension} is not restricted (best effort)")


def confine(plan: InnerPlan) -> list[Shortfall]:
    """Applies the limits, the seccomp filter and Landlock to this process, for good, then drops
    its capabilities (last: as root, listing folders for Landlock may need them); returns what
    failed (what `shortfalls` already found missing is not attempted again)."""
    found: list[Shortfall] = []
    try:
        limits.apply(plan.rlimit_nofile, plan.rlimit_cpu)
    except (OSError, ValueError) as exc:
        found.append(Shortfall("limits", f"the resource limits could not be set: {exc}", _TIP_BUG))
    if plan.seccomp != "none" and seccomp.available():
        try:
            seccomp.install(plan.seccomp)
        except OSError as exc:
            found.append(Shortfall("network", str(exc.strerror), _TIP_SECCOMP))
    abi = landlock.abi_version()
    if abi and (wants_filesystem(plan) or plan.tcp_connect_ports is not None):
        found.extend(_landlock(plan, abi))
    confined = [d for d, wanted in (("filesystem", wants_filesystem(plan)), ("network", wants_network(plan))) if wanted]
    if confined:  # a root server's capabilities would undo both
        try:
            limits.drop_capabilities()
        except OSError as exc:
            what = f"the capabilities could not be dropped: {exc.strerror}"
            found.extend(Shortfall(dimension, what, _TIP_BUG) for dimension in confined)
    return found


def _landlock(plan: InnerPlan, abi: int) -> list[Shortfall]:
    fs = wants_filesystem(plan)
    result = landlock.restrict(
        plan.landlock_read, plan.landlock_write, plan.landlock_deny, plan.tcp_connect_ports, filesystem=fs
    )
    found = []
    if fs and not result.fs:
        found.append(Shortfall("filesystem", result.problem, _TIP_LANDLOCK))
    if plan.tcp_connect_ports is not None and abi >= landlock.TCP_ABI and not result.tcp:
        found.append(Shortfall("network", result.problem, _TIP_TCP))
    if result.skipped:
        _say(
            f"mcpshield: sandbox: warning: {len(result.skipped)} allowed path(s) got no Landlock rule and "
            f"stay out of reach, e.g. {result.skipped[0]}"
        )
    return found


def _confine_and_exec(plan: InnerPlan) -> NoReturn:
    settle(plan, confine(plan))
    # Python ignores these at start-up and an exec keeps ignored signals ignored.
    for signum in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(signum, signal.SIG_DFL)
    command = plan.argv[0]
    try:
        os.execvp(command, plan.argv)  # noqa: S606 -- the user's own server command, as given
    except FileNotFoundError:
        _fail(
            f"cannot run {command}: not found",
            "check the command and PATH; in the sandbox only the paths it may read are visible",
            EXIT_NOT_FOUND,
        )
    except OSError as exc:
        _fail(
            f"cannot run {command}: {exc.strerror}",
            "the sandbox may not let it be read or executed: add its folder to [sandbox] read",
        )


def _listen(forward: Forward) -> socket.socket:
    import socket

    try:
        return socket.create_server(("127.0.0.1", forward.port), backlog=LISTEN_BACKLOG)
    except OSError as exc:
        _fail(f"cannot listen on 127.0.0.1:{forward.port} for the egress proxy: {exc.strerror}", _TIP_BUG)


def _die_with(parent: int) -> None:
    """The server gets SIGKILL if the launcher (its relay to the proxy) dies first."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL))
    if os.getppid() != parent:  # it died before the line above
        os._exit(EXIT_CANNOT_CONFINE)


def _serve_and_mirror(listener: socket.socket, unix_path: str, child: int) -> NoReturn:
    """Relays connections until the server exits, passing it SIGTERM, SIGINT and SIGHUP; then
    ends the same way it did."""
    import contextlib
    import threading

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):  # already gone: waitpid below returns
            os.kill(child, signum)

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)
    _release_stdio()
    threading.Thread(target=_accept, args=(listener, unix_path), name="forwarder", daemon=True).start()
    # The wait is the server's lifetime: what ends it is the server's exit, not a timeout.
    _, status = os.waitpid(child, 0)
    mirror(status)


def _release_stdio() -> None:
    """The protocol is the server's alone: the relay must not hold its pipes open."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)


def mirror(status: int) -> NoReturn:
    """Ends this process as a wait status says the child ended: the same exit code, or the same
    signal raised on itself (without a core dump of its own)."""
    code = os.waitstatus_to_exitcode(status)
    sys.stderr.flush()
    if code >= 0:
        os._exit(code)
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    if -code != signal.SIGKILL:  # the one whose disposition cannot be set (nor changed)
        signal.signal(-code, signal.SIG_DFL)
    signal.raise_signal(-code)
    os._exit(128 - code)  # a signal whose default action is not to end the process


def _accept(listener: socket.socket, unix_path: str) -> None:
    import errno
    import threading

    slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
    while True:
        try:
            conn, _ = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                continue  # that one connection failed, not the listener
            _say(f"mcpshield: sandbox: warning: the relay to the egress proxy stopped: {exc.strerror}")
            return
        if slots.acquire(blocking=False):
            threading.Thread(target=_bridge, args=(conn, unix_path, slots), daemon=True).start()
        else:
            conn.close()


def _bridge(conn: socket.socket, unix_path: str, slots: threading.BoundedSemaphore) -> None:
    import socket

    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.settimeout(CONNECT_TIMEOUT_S)
        upstream.connect(unix_path)
        upstream.settimeout(None)
    except OSError:
        for sock in (conn, upstream):
            sock.close()
        slots.release()
        return
    _Bridge(conn, upstream, slots).start()


class _Bridge:
    """One relayed connection: a thread per direction; the last to finish closes both sockets.
    A relay waits as long as its peers keep the connection open; either one closing ends it."""

    def __init__(self, a: socket.socket, b: socket.socket, slots: threading.BoundedSemaphore) -> None:
        import threading

        self._socks = (a, b)
        self._slots = slots
        self._lock = threading.Lock()
        self._running = 2

    def start(self) -> None:
        import threading

        a, b = self._socks
        threading.Thread(target=self._pump, args=(b, a), daemon=True).start()
        self._pump(a, b)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        import contextlib
        import socket

        try:
            while data := src.recv(CHUNK):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)  # half-close: the other direction may go on
        except OSError:
            for sock in self._socks:  # a reset on one side ends both directions
                with contextlib.suppress(OSError):  # not connected any more
                    sock.shutdown(socket.SHUT_RDWR)
        finally:
            self._finished()

    def _finished(self) -> None:
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if last:
            for sock in self._socks:
                sock.close()
            self._slots.release()


def _fail(what: str, tip: str, code: int = EXIT_CANNOT_CONFINE) -> NoReturn:
    _say(f"mcpshield: sandbox: {what}. Tip: {tip}")
    sys.exit(code)


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


if __name__ == "__main__":
    main()
