"""What this machine can enforce, found by trying (bubblewrap really runs a sandbox) and cached
as JSON in mcpshield's cache folder until something it depends on changes; and the backend a
profile's `[sandbox]` gets here, with what it cannot enforce and how to fix that."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal

from mcpshield import __version__
from mcpshield.errors import SandboxError
from mcpshield.sandbox import probecache
from mcpshield.sandbox.landlock import TCP_ABI, TRUNCATE_ABI
from mcpshield.sandbox.spec import SandboxSpec

Backend = Literal["bubblewrap", "landlock", "seatbelt", "none"]

#: Bump when what is probed or how changes: older cache files are then ignored.
PROBE_FORMAT: Final = 1
#: Bound on the trial sandbox (bwrap and a Python that imports mcpshield): seconds, even on a
#: loaded CI machine.
PROBE_TIMEOUT_S: Final = 20.0
#: Bound on `bwrap --version`.
VERSION_TIMEOUT_S: Final = 5.0
#: Where bubblewrap is looked for before PATH (a PATH entry the user can write is a weaker bet).
BWRAP_CANDIDATES: Final = ("/usr/bin/bwrap", "/usr/local/bin/bwrap", "/run/current-system/sw/bin/bwrap")
#: The oldest bubblewrap with everything bwrap_argv uses (`--perms` before `--tmpfs`: 0.6.0).
MIN_BWRAP: Final = (0, 6, 0)
SANDBOX_EXEC: Final = "/usr/bin/sandbox-exec"
#: The kernel settings that decide whether unprivileged user namespaces (so bubblewrap) work.
USERNS_SYSCTLS: Final = {
    "user.max_user_namespaces": "/proc/sys/user/max_user_namespaces",
    "kernel.unprivileged_userns_clone": "/proc/sys/kernel/unprivileged_userns_clone",
    "kernel.apparmor_restrict_unprivileged_userns": "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
}
#: Bytes of bwrap's stderr kept for the diagnosis.
MAX_STDERR: Final = 4096

INSTALL_BWRAP: Final = "install bubblewrap (apt install bubblewrap; dnf install bubblewrap; pacman -S bubblewrap)"
FIX_APPARMOR: Final = (
    "AppArmor forbids unprivileged user namespaces here (Ubuntu 24.04+): give bwrap an AppArmor "
    "profile that allows `userns` (in /etc/apparmor.d/, loaded with `sudo apparmor_parser -r`), or "
    "lift the restriction: `sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`"
)
FIX_USERNS_CLONE: Final = (
    "`sudo sysctl -w kernel.unprivileged_userns_clone=1` (and set it in /etc/sysctl.d/ to keep it)"
)
FIX_MAX_USERNS: Final = "`sudo sysctl -w user.max_user_namespaces=15000` (and set it in /etc/sysctl.d/ to keep it)"
FIX_CONTAINER: Final = (
    "this container forbids new namespaces: allow them (e.g. docker run --security-opt "
    'seccomp=unconfined), or rely on Landlock: backend = "landlock"'
)
CHECK_BWRAP: Final = "see bubblewrap's own error: bwrap --unshare-net --ro-bind / / true"
FIX_LANDLOCK: Final = (
    "Landlock needs Linux 5.13 or later built with CONFIG_SECURITY_LANDLOCK and `landlock` in the lsm= boot parameter"
)
#: Landlock filters TCP connect by port alone: with the egress proxy on a loopback port, a server
#: that reads the port from HTTP_PROXY can reach any host listening on that same port number.
FIX_PORT_FENCE: Final = (
    "under Landlock a host list is only a port fence (the server could reach any host on the proxy's "
    "port); install bubblewrap for a network namespace, or accept the port fence with "
    'enforcement = "best_effort"'
)
#: Before Landlock ABI 3, truncate(2) is not governed: any file the user owns could be emptied.
FIX_TRUNCATE: Final = (
    "Landlock before ABI 3 (Linux 6.2) cannot stop a server emptying any file you own (truncate); "
    "install bubblewrap, or use a newer kernel"
)
FIX_WINDOWS: Final = (
    'Windows has no filesystem or network sandbox in mcpshield yet; enforcement = "best_effort" runs '
    "the server with a Job Object's limits only"
)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What this machine offers a sandbox, as probed (see `probe`)."""

    platform: str
    kernel: str
    uid: int | None
    #: bubblewrap: where, which version, whether a trial sandbox with bwrap_argv's flags ran,
    #: and if not why (one line) and what to do.
    bwrap: str | None = None
    bwrap_version: str = ""
    bwrap_works: bool = False
    bwrap_problem: str = ""
    bwrap_fix: str = ""
    #: The kernel settings of USERNS_SYSCTLS that exist here, by name.
    userns: dict[str, int] = field(default_factory=dict)
    landlock_abi: int = 0
    seccomp: bool = False
    sandbox_exec: bool = False


@dataclass(frozen=True, slots=True)
class Choice:
    """The backend a spec gets on this machine. `missing` maps each dimension it cannot enforce
    ("filesystem", "network", "limits") to the one-line fix; empty: everything is enforced."""

    backend: Backend
    missing: Mapping[str, str]
    #: The bubblewrap to run (backend "bubblewrap").
    bwrap: str | None = None
    #: What Landlock and seccomp can add (inside bubblewrap too).
    landlock_abi: int = 0
    seccomp: bool = False
    #: Why this backend, in a few words (for messages and the audit log).
    reason: str = ""


def probe(*, refresh: bool = False) -> Capabilities:
    """This machine's capabilities: from the cache when its key (kernel, uid, bubblewrap, Python,
    namespace settings, mcpshield version) still matches, else probed now and cached."""
    key = _cache_key()
    path = probecache.cache_path()
    if not refresh:
        cached = _cached(path, key)
        if cached is not None:
            return cached
    caps = probe_now()
    probecache.store(path, key, asdict(caps))
    return caps


def probe_now() -> Capabilities:
    """Probes without the cache."""
    platform = _platform()
    uid = os.getuid() if hasattr(os, "getuid") else None
    base = Capabilities(platform, _kernel(), uid)
    if platform == "darwin":
        return Capabilities(platform, base.kernel, uid, sandbox_exec=os.access(SANDBOX_EXEC, os.X_OK))
    if platform != "linux":
        return base
    from mcpshield.sandbox import landlock, seccomp

    userns = read_userns_sysctls()
    bwrap = find_bwrap()
    version = bwrap_version(bwrap) if bwrap else ""
    works, problem, fix = try_bwrap(bwrap, version, userns, uid)
    abi, filters = landlock.abi_version(), seccomp.available()
    return Capabilities(platform, base.kernel, uid, bwrap, version, works, problem, fix, userns, abi, filters)


def choose(spec: SandboxSpec, caps: Capabilities) -> Choice:
    """The backend `spec` gets on this machine and what it leaves unenforced: "auto" takes the
    strongest that works (bubblewrap, then Landlock, on Linux; Seatbelt on macOS); a backend named
    but not working here leaves every dimension it would enforce missing, with its fix."""

    def none(missing: dict[str, str], reason: str) -> Choice:
        return Choice("none", missing, landlock_abi=caps.landlock_abi, seccomp=caps.seccomp, reason=reason)

    if caps.platform == "win32":
        return none(_all_missing(spec, FIX_WINDOWS, limits=False), "Windows")
    if spec.backend == "none":
        fix = 'the profile says backend = "none"; set backend = "auto" to have it enforced'
        return none(_all_missing(spec, fix, limits=False), "backend = none")
    candidates: tuple[Backend, ...] = _candidates(caps.platform) if spec.backend == "auto" else (spec.backend,)
    for name in candidates:
        if _not_working(name, caps) is None:
            missing = _landlock_missing(spec, caps) if name == "landlock" else {}
            bwrap = caps.bwrap if name == "bubblewrap" else None
            reason = _strength(name, caps)
            return Choice(name, missing, bwrap, caps.landlock_abi, caps.seccomp, reason)
    fixes = [found for name in candidates if (found := _not_working(name, caps))] or [_no_backend(caps.platform)]
    limits = caps.platform not in ("linux", "darwin")
    reason = "no backend works here" if spec.backend == "auto" else f"{spec.backend} does not work here"
    return none(_all_missing(spec, "; or ".join(fixes), limits=limits), reason)


def wanted_dimensions(spec: SandboxSpec) -> tuple[str, ...]:
    """The dimensions `spec` restricts: the filesystem and the limits always (write nothing
    outside `write`; an open-file limit), the network unless it is `true`."""
    return ("filesystem", "limits") if spec.network is True else ("filesystem", "network", "limits")


def find_bwrap() -> str | None:
    """bubblewrap's path: a usual system location first, then PATH."""
    for candidate in BWRAP_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("bwrap")


def bwrap_version(bwrap: str) -> str:
    """`bwrap --version`'s number ("0.8.0"); "" when it does not say."""
    try:
        done = subprocess.run(
            [bwrap, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    found = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", done.stdout)
    return found.group(0) if found else ""


def try_bwrap(bwrap: str | None, version: str, userns: Mapping[str, int], uid: int | None) -> tuple[bool, str, str]:
    """(works, problem, fix): runs a Python that imports mcpshield in a sandbox made by
    bwrap_argv with every feature it uses (no network, a read list, a write path, a hidden
    folder and file), as the launcher would."""
    if bwrap is None:
        return False, "bubblewrap is not installed", INSTALL_BWRAP
    if version and _version_tuple(version) < MIN_BWRAP:
        wanted = ".".join(map(str, MIN_BWRAP))
        return False, f"bubblewrap {version} is too old (mcpshield needs {wanted} or later)", INSTALL_BWRAP
    from mcpshield.sandbox.bwrap import bwrap_argv, system_read_dirs

    work = tempfile.mkdtemp(prefix="mcpshield-probe-")
    try:
        os.mkdir(f"{work}/hidden")
        Path(work, "hidden-file").touch()
        spec = SandboxSpec(read=(), write=(work,), deny=(f"{work}/hidden", f"{work}/hidden-file"))
        inner = [sys.executable, "-I", "-c", "import mcpshield.sandbox"]
        system = system_read_dirs()
        argv = bwrap_argv(spec, inner, system_read=system, extra_write=(), cwd=work, proxy_socket=None, bwrap=bwrap)
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=PROBE_TIMEOUT_S, check=False)
    except SandboxError as err:
        return False, str(err), err.tip
    except subprocess.TimeoutExpired:
        return False, f"a trial sandbox did not finish within {PROBE_TIMEOUT_S:g} s", CHECK_BWRAP
    except OSError as exc:
        return False, f"bubblewrap could not be started: {exc.strerror or exc}", INSTALL_BWRAP
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if done.returncode == 0:
        return True, "", ""
    return (False, *diagnose(done.stderr[-MAX_STDERR:].decode(errors="replace"), userns, uid))


def diagnose(stderr: str, userns: Mapping[str, int], uid: int | None) -> tuple[str, str]:
    """(problem, fix) for a trial sandbox that failed with `stderr`, given the namespace settings."""
    last = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "no message")
    unprivileged = uid != 0
    if userns.get("user.max_user_namespaces") == 0 or "max_user_namespaces" in stderr:
        return "user namespaces are disabled (user.max_user_namespaces = 0)", FIX_MAX_USERNS
    if unprivileged and userns.get("kernel.unprivileged_userns_clone") == 0:
        return "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0)", FIX_USERNS_CLONE
    apparmor = userns.get("kernel.apparmor_restrict_unprivileged_userns") == 1
    if unprivileged and (apparmor or "setting up uid map: Permission denied" in stderr or "RTM_NEWADDR" in stderr):
        return f"bubblewrap cannot set up its user namespace ({last})", FIX_APPARMOR
    if "No permissions to creat" in stderr:
        return f"the kernel refuses unprivileged user namespaces ({last})", FIX_USERNS_CLONE
    if "Creating new namespace failed" in stderr or "Operation not permitted" in stderr:
        return f"namespaces cannot be created here ({last})", FIX_CONTAINER
    if "Unknown option" in stderr:
        return f"this bubblewrap lacks an option mcpshield uses ({last})", INSTALL_BWRAP
    return f"a trial sandbox failed: {last}", CHECK_BWRAP


def read_userns_sysctls() -> dict[str, int]:
    found: dict[str, int] = {}
    for name, path in USERNS_SYSCTLS.items():
        with contextlib.suppress(OSError, ValueError), open(path) as file:  # absent: not in the answer
            found[name] = int(file.read().strip())
    return found


def _candidates(platform: str) -> tuple[Backend, ...]:
    if platform == "linux":
        return ("bubblewrap", "landlock")
    return ("seatbelt",) if platform == "darwin" else ()


def _not_working(name: str, caps: Capabilities) -> str | None:
    """None if backend `name` works here, else its fix."""
    if name == "bubblewrap":
        if caps.platform != "linux":
            return 'bubblewrap is Linux only; use backend = "auto"'
        return None if caps.bwrap_works else f"{caps.bwrap_problem}: {caps.bwrap_fix}"
    if name == "landlock":
        if caps.platform != "linux":
            return 'Landlock is Linux only; use backend = "auto"'
        return None if caps.landlock_abi >= 1 else FIX_LANDLOCK
    if name == "seatbelt":
        if caps.platform != "darwin":
            return 'Seatbelt (sandbox-exec) is macOS only; use backend = "auto"'
        return None if caps.sandbox_exec else f"{SANDBOX_EXEC} is missing"
    return f"unknown backend {name!r}"


def _landlock_missing(spec: SandboxSpec, caps: Capabilities) -> dict[str, str]:
    """What Landlock (with seccomp) cannot enforce of `spec` here."""
    if caps.landlock_abi < TRUNCATE_ABI:
        return {"filesystem": FIX_TRUNCATE, **_landlock_network_missing(spec, caps)}
    return _landlock_network_missing(spec, caps)


def _landlock_network_missing(spec: SandboxSpec, caps: Capabilities) -> dict[str, str]:
    tcp = caps.landlock_abi >= TCP_ABI
    if spec.network is False and not caps.seccomp:  # Landlock's TCP rules alone leave UDP open
        return {"network": "network = false needs seccomp (Linux on x86-64 or aarch64); or install bubblewrap"}
    if isinstance(spec.network, tuple) and not (tcp and caps.seccomp):
        return {"network": "a host list needs Landlock ABI 4 (Linux 6.7) and seccomp; or install bubblewrap"}
    if isinstance(spec.network, tuple):
        return {"network": FIX_PORT_FENCE}
    return {}


def _all_missing(spec: SandboxSpec, fix: str, *, limits: bool) -> dict[str, str]:
    return {d: fix for d in wanted_dimensions(spec) if d != "limits" or limits}


def _strength(name: str, caps: Capabilities) -> str:
    if name == "bubblewrap":
        return f"bubblewrap {caps.bwrap_version} (namespaces)".replace("  ", " ")
    if name == "landlock":
        return f"Landlock ABI {caps.landlock_abi}" + (" with seccomp" if caps.seccomp else "")
    return "Seatbelt (sandbox-exec)"


def _no_backend(platform: str) -> str:
    return f'mcpshield has no sandbox for {platform}; enforcement = "best_effort" runs the server unconfined'


def _platform() -> str:
    if sys.platform.startswith("linux"):
        return "linux"
    return sys.platform


def _kernel() -> str:
    import platform

    return platform.release()


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


# --- the cache's key and answer ------------------------------------------------------------------


def _cache_key() -> dict[str, Any]:
    """What the answer depends on: when any of it changes, the machine is probed again."""
    bwrap = find_bwrap() if _platform() == "linux" else None
    stamp: list[Any] | None = None
    if bwrap is not None:
        with contextlib.suppress(OSError):  # gone meanwhile: the key differs anyway
            info = os.stat(bwrap)
            stamp = [bwrap, info.st_size, info.st_mtime_ns]
    return {
        "format": PROBE_FORMAT,
        "mcpshield": __version__,
        "platform": _platform(),
        "kernel": _kernel(),
        "uid": os.getuid() if hasattr(os, "getuid") else None,
        "bwrap": stamp,
        "python": sys.executable,
        "userns": read_userns_sysctls() if _platform() == "linux" else {},
        "lsm": _read_small("/sys/kernel/security/lsm"),
    }


def _cached(path: str, key: Mapping[str, Any]) -> Capabilities | None:
    answer = probecache.load(path, key)
    if answer is None:
        return None
    try:
        return _from_json(answer)
    except (TypeError, ValueError):  # written by another version, or edited: probe again
        return None


def _from_json(data: Mapping[str, Any]) -> Capabilities:
    """Capabilities from their JSON form; TypeError/ValueError when a field is missing or of the
    wrong type."""
    expected = {f.name: f.type for f in fields(Capabilities)}
    if set(data) != set(expected):
        raise ValueError("fields differ")
    caps = Capabilities(**data)
    checks = (
        isinstance(caps.platform, str) and isinstance(caps.kernel, str),
        caps.uid is None or isinstance(caps.uid, int),
        caps.bwrap is None or isinstance(caps.bwrap, str),
        all(isinstance(getattr(caps, n), str) for n in ("bwrap_version", "bwrap_problem", "bwrap_fix")),
        all(isinstance(getattr(caps, n), bool) for n in ("bwrap_works", "seccomp", "sandbox_exec")),
        isinstance(caps.landlock_abi, int) and not isinstance(caps.landlock_abi, bool),
        isinstance(caps.userns, dict) and all(isinstance(v, int) for v in caps.userns.values()),
    )
    if not all(checks):
        raise ValueError("a field has the wrong type")
    return caps


def _read_small(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read(4096).strip()
    except OSError:
        return ""
