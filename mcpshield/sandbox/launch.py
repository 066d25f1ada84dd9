"""A profile's `[sandbox]` and the server's launch turned into the sandboxed launch: the backend
chosen, the refusal when isolation is missing, the per-server caches, the egress proxy's socket
and the in-sandbox launcher's plan."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from mcpshield.errors import SandboxError
from mcpshield.sandbox.spec import (
    DEFAULT_DENY,
    DEFAULT_NETWORK_DENY,
    DIMENSIONS,
    INNER_PLAN_ENV,
    PRIVATE_TMP,
    Forward,
    InnerPlan,
    SandboxSpec,
    inside,
)
from mcpshield.supervisor import LaunchSpec, resolve_command

if TYPE_CHECKING:
    from mcpshield.profile.model import SandboxSection
    from mcpshield.sandbox.probe import Choice

#: The loopback port the in-sandbox forwarder listens on; inside a network namespace of its own
#: nothing else can hold it.
FORWARD_PORT: Final = 3128
#: Caches the package runners keep, each pointed at a private directory when `caches` is on.
CACHE_VARS: Final = {"npm_config_cache": "npm", "UV_CACHE_DIR": "uv", "PIP_CACHE_DIR": "pip"}
#: Package runners, and the registry hosts their first start in a sandbox needs.
PACKAGE_RUNNERS: Final = {
    "npx": ("registry.npmjs.org",), "pnpx": ("registry.npmjs.org",), "bunx": ("registry.npmjs.org",),
    "uvx": ("pypi.org", "files.pythonhosted.org"), "pipx": ("pypi.org", "files.pythonhosted.org"),
}  # fmt: skip
#: Proxy variables for the child; NO_PROXY is emptied so even local names go through the proxy.
PROXY_VARS: Final = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
#: Characters kept in a server's cache folder name.
_SAFE_NAME: Final = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class EgressPlan:
    """The egress proxy this launch needs: its bound socket and the host lists it enforces."""

    sock: socket.socket
    allow: tuple[str, ...]
    deny: tuple[str, ...]
    #: Where the Unix socket lives (removed at the end); None for a TCP socket.
    unix_dir: str | None = None


@dataclass(frozen=True, slots=True)
class SandboxedLaunch:
    """What `run` starts instead of the bare server, and what it must serve alongside."""

    launch: LaunchSpec
    backend: str
    #: Dimension → why it is not enforced (only ever non-empty under best_effort).
    unenforced: Mapping[str, str]
    egress: EgressPlan | None = None
    memory_mb: int = 0
    summary: dict[str, Any] = field(default_factory=dict)
    #: Said on stderr if the server fails: what the sandbox may have kept from it.
    hint: str | None = None

    def close(self) -> None:
        """Closes the proxy's socket and removes its folder. Idempotent."""
        if self.egress is not None:
            self.egress.sock.close()
            if self.egress.unix_dir is not None:
                shutil.rmtree(self.egress.unix_dir, ignore_errors=True)


def resolve(section: SandboxSection, home: str | None = None) -> SandboxSpec:
    """The profile's section with `~` expanded and the default deny list filled in."""
    base = home or os.path.expanduser("~")

    def absolute(paths: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(os.path.normpath(base + p[1:] if p.startswith("~") else p) for p in paths)

    return SandboxSpec(
        enforcement=section.enforcement,
        backend=section.backend,
        network=section.network if isinstance(section.network, bool) else tuple(section.network),
        network_deny=tuple(DEFAULT_NETWORK_DENY if section.network_deny is None else section.network_deny),
        read=None if section.read is None else absolute(section.read),
        write=absolute(section.write),
        deny=absolute(DEFAULT_DENY if section.deny is None else section.deny),
        memory_mb=section.memory_mb,
        cpu_seconds=section.cpu_seconds,
        max_open_files=section.max_open_files,
    )


def prepare(spec: SandboxSpec, launch: LaunchSpec, server: str, *, caches: bool = True) -> SandboxedLaunch:
    """The sandboxed launch of `launch`; a SandboxError when the profile requires isolation this
    machine cannot give, or names a `write` path that does not exist."""
    from mcpshield.sandbox.probe import choose, probe

    choice = choose(spec, probe())
    _refuse_or_warn(spec, choice)
    spec = replace(spec, deny=(*spec.deny, *_own_state()))
    for path in spec.write:
        if not os.path.exists(path):
            raise SandboxError(
                f"the sandbox's write path {path} does not exist",
                "create it, or remove it from the profile's [sandbox] write",
            )
    argv = resolve_command(launch.argv, launch.env)
    env = dict(launch.env)
    extra_write = _private_dirs(server, env, caches=caches, private_tmp=choice.backend != "bubblewrap")
    egress = _egress(spec, choice.backend)
    try:
        return _sandboxed(spec, choice, argv=argv, env=env, extra_write=extra_write, egress=egress, launch=launch)
    except BaseException:
        if egress is not None:
            egress.sock.close()
            if egress.unix_dir is not None:
                shutil.rmtree(egress.unix_dir, ignore_errors=True)
        raise


def _sandboxed(
    spec: SandboxSpec,
    choice: Choice,
    *,
    argv: tuple[str, ...],
    env: dict[str, str],
    extra_write: tuple[str, ...],
    egress: EgressPlan | None,
    launch: LaunchSpec,
) -> SandboxedLaunch:
    plan = InnerPlan(
        argv=argv,
        **_landlock_fields(spec, choice, extra_write, egress),
        seccomp=_seccomp_mode(spec) if choice.backend == "landlock" and choice.seccomp else "none",
        rlimit_nofile=spec.max_open_files,
        rlimit_cpu=spec.cpu_seconds,
        forward=Forward(FORWARD_PORT, egress.sock.getsockname()) if egress and egress.unix_dir else None,
        required=_required(choice),
    )
    if egress is not None:  # also where only partly enforced (best_effort): the proxy still decides
        _proxy_env(env, egress)
    env[INNER_PLAN_ENV] = json.dumps(_plan_json(plan))
    inner = (sys.executable, "-I", "-m", "mcpshield.sandbox.inner")
    wrapped = _wrap(choice, spec=spec, argv=argv, inner=inner, extra_write=extra_write, cwd=launch.cwd, egress=egress)
    summary = {
        "backend": choice.backend,
        "enforcement": spec.enforcement,
        "unenforced": sorted(choice.missing),
        "network": spec.network if isinstance(spec.network, bool) else list(spec.network),
        "read": None if spec.read is None else list(spec.read),
        "write": list(spec.write),
        "memory_mb": spec.memory_mb,
    }
    return SandboxedLaunch(
        LaunchSpec(tuple(wrapped), env, launch.cwd, spec.memory_mb),
        choice.backend,
        dict(choice.missing),
        egress,
        spec.memory_mb,
        summary,
        _registry_hint(spec, argv[0]),
    )


def _registry_hint(spec: SandboxSpec, program: str) -> str | None:
    """For a package runner without the network: its first start must download the server."""
    registries = PACKAGE_RUNNERS.get(os.path.basename(program))
    if spec.network is True or registries is None:
        return None
    hosts = ", ".join(f'"{host}"' for host in registries)
    return (
        f"{os.path.basename(program)} downloads the server into the sandbox's private cache on its first "
        f"start, which needs its registry: add {hosts} to [sandbox] network, or install the server and "
        "name its program in the command"
    )


def _refuse_or_warn(spec: SandboxSpec, choice: Choice) -> None:
    if not choice.missing:
        return
    missing = ", ".join(sorted(choice.missing))
    fixes = "; ".join(dict.fromkeys(choice.missing[d] for d in sorted(choice.missing)))
    if spec.enforcement == "required":
        raise SandboxError(
            f"the profile's [sandbox] cannot be enforced here ({missing}); the server was not started",
            f"{fixes}; `mcpshield doctor` shows what this machine can enforce; "
            'enforcement = "best_effort" starts it anyway, unconfined in these respects',
        )
    for dimension in sorted(choice.missing):
        sys.stderr.write(
            f"mcpshield: sandbox: {dimension} is not fully enforced on this machine "
            f"(best_effort): {choice.missing[dimension]}\n"
        )


def _private_dirs(server: str, env: dict[str, str], *, caches: bool, private_tmp: bool) -> tuple[str, ...]:
    """The per-server folders the server may write (its caches; its temp folder where /tmp is
    not private to it), created 0700, with the variables that point the tools at them."""
    from mcpshield.sandbox.location import server_dir

    root = server_dir(_SAFE_NAME.sub("_", server) or "server")
    made: list[str] = []
    wanted = dict(CACHE_VARS) if caches else {}
    if private_tmp:
        wanted["TMPDIR"] = "tmp"
    for variable, name in wanted.items():
        path = root / name
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        env[variable] = str(path)
        made.append(str(path))
    return tuple(made)


def _egress(spec: SandboxSpec, backend: str) -> EgressPlan | None:
    """The proxy's bound socket when `network` lists hosts: a Unix socket to bind into
    bubblewrap's namespace, else a loopback TCP port (the only one Landlock lets it reach)."""
    if isinstance(spec.network, bool) or backend == "none":
        return None
    from mcpshield.sandbox.proxy import bind_tcp, bind_unix

    if backend == "bubblewrap":
        folder = tempfile.mkdtemp(prefix="mcpshield-egress-")
        try:
            sock = bind_unix(Path(folder) / "proxy.sock")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return EgressPlan(sock, spec.network, spec.network_deny, folder)
    return EgressPlan(bind_tcp(), spec.network, spec.network_deny)


def _proxy_env(env: dict[str, str], egress: EgressPlan) -> None:
    port = FORWARD_PORT if egress.unix_dir else egress.sock.getsockname()[1]
    for name in PROXY_VARS:
        env[name] = f"http://127.0.0.1:{port}"
    env["NO_PROXY"] = env["no_proxy"] = ""
    env["NODE_USE_ENV_PROXY"] = "1"  # Node 24+; Node 20 ignores the proxy (docs/sandbox.md)


def _required(choice: Choice) -> tuple[str, ...]:
    """What the in-sandbox launcher must enforce or refuse to start: under bubblewrap only the
    limits (the namespaces enforce filesystem and network), elsewhere every dimension the choice
    promised."""
    if choice.backend == "bubblewrap":
        return ("limits",)
    return tuple(d for d in DIMENSIONS if d not in choice.missing)


def _landlock_fields(
    spec: SandboxSpec, choice: Choice, extra_write: tuple[str, ...], egress: EgressPlan | None
) -> dict[str, Any]:
    """Landlock's part of the plan: the whole sandbox under the `landlock` backend, nothing under
    the others (inside bubblewrap it would add little the namespaces do not, and its carving
    would forbid creating anything directly in a `write` folder holding a `deny` path)."""
    if choice.backend != "landlock":
        return {}
    from mcpshield.sandbox.bwrap import root_secrets
    from mcpshield.sandbox.landlock import TCP_ABI

    read = None if spec.read is None else (*_system_read(), *spec.read)
    if spec.network is True or choice.landlock_abi < TCP_ABI:  # no TCP rules: seccomp's part alone
        ports: tuple[int, ...] | None = None
    else:
        ports = (egress.sock.getsockname()[1],) if egress is not None else ()
    return {
        "landlock_read": read,
        "landlock_write": (*spec.write, *extra_write, *_devices()),
        "landlock_deny": (*spec.deny, *root_secrets()),
        "tcp_connect_ports": ports,
    }


def _seccomp_mode(spec: SandboxSpec) -> Literal["none", "no_inet", "tcp_only"]:
    if spec.network is True:
        return "none"
    return "no_inet" if spec.network is False else "tcp_only"


def _devices() -> tuple[str, ...]:
    """Devices a program writes to as a matter of course (not /dev/tty: a write tree may
    ioctl, and TIOCSTI would type into a terminal)."""
    return ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/shm")  # noqa: S108 - granted, not created


def _system_read() -> tuple[str, ...]:
    """What every program needs to read, and mcpshield's own code (the in-sandbox launcher)."""
    from mcpshield.sandbox.bwrap import system_read_dirs

    package = str(Path(__file__).resolve().parent.parent)
    return (*system_read_dirs(), package, "/proc", "/sys")  # of /dev only _devices(): not the disks


def _wrap(
    choice: Choice,
    *,
    spec: SandboxSpec,
    argv: tuple[str, ...],
    inner: tuple[str, ...],
    extra_write: tuple[str, ...],
    cwd: str | None,
    egress: EgressPlan | None,
) -> list[str]:
    backend = choice.backend
    if backend == "bubblewrap":
        from mcpshield.sandbox.bwrap import bwrap_argv

        assert choice.bwrap is not None
        cwd = cwd or os.getcwd()
        named = _named_in_private_tmp(argv, cwd) if spec.read is None else ()
        return bwrap_argv(
            spec,
            inner,
            system_read=(*_system_read(), *named),
            extra_write=extra_write,
            cwd=_visible_cwd(spec, cwd, named),
            proxy_socket=egress.sock.getsockname() if egress and egress.unix_dir else None,
            bwrap=choice.bwrap,
        )
    if backend == "seatbelt":
        from mcpshield.sandbox.seatbelt import seatbelt_argv, seatbelt_profile

        port = egress.sock.getsockname()[1] if egress is not None else None
        profile = seatbelt_profile(spec, system_read=_system_read(), extra_write=extra_write, proxy_port=port)
        return seatbelt_argv(profile, inner)
    return list(inner)


def _named_in_private_tmp(argv: tuple[str, ...], cwd: str) -> tuple[str, ...]:
    """The folders directly under the host's /tmp that the server's command names (its program,
    an argument that is an existing path, its working directory): bubblewrap's private /tmp would
    hide the server's own code and files, so these stay visible, read-only."""
    named: list[str] = []
    for word in (*argv, cwd):
        if not os.path.isabs(word) or not os.path.exists(word):
            continue
        for path in {os.path.normpath(word), os.path.realpath(word)}:
            parts = path.split("/")
            if len(parts) > 2 and f"/{parts[1]}" == PRIVATE_TMP:  # "", "tmp", the name
                named.append(f"{PRIVATE_TMP}/{parts[2]}")
    return tuple(dict.fromkeys(named))


def _visible_cwd(spec: SandboxSpec, cwd: str, named: tuple[str, ...]) -> str:
    """The server's working directory under bubblewrap: mcpshield's where the server can see it
    (a `write` path; else a `read` path, or anywhere when `read` is absent, that no `deny` path
    covers and that is not in the host's /tmp unless the command names it), else the first
    `write` path or the sandbox's own /tmp, said once on stderr."""
    readable = (*spec.read, *_system_read(), *named) if spec.read is not None else ("/",)
    hidden = (*spec.deny, PRIVATE_TMP) if spec.read is None else spec.deny
    if any(inside(cwd, p) for p in spec.write) or (
        (any(inside(cwd, p) for p in readable) and not any(inside(cwd, p) for p in hidden))
        or (any(inside(cwd, p) for p in named) and not any(inside(cwd, p) for p in spec.deny))
    ):
        return cwd
    instead = spec.write[0] if spec.write else PRIVATE_TMP
    sys.stderr.write(f"mcpshield: sandbox: the server cannot see {cwd}; it starts in {instead}\n")
    return instead


def _own_state() -> tuple[str, ...]:
    """mcpshield's own state, hidden from every server: its profiles (which a server able to write
    them could loosen), the audit log, the approver's socket (where a server could put requests of
    its own before the person) and the probe's cache (which decides the next backend)."""
    from mcpshield.approval.location import approver_dir
    from mcpshield.audit.location import log_root
    from mcpshield.errors import ApprovalError
    from mcpshield.profile.load import user_config_dir
    from mcpshield.sandbox.probecache import cache_path

    paths = [str(user_config_dir()), str(log_root()), str(cache_path())]
    with contextlib.suppress(ApprovalError):  # an approver folder nobody can use needs no hiding
        paths.append(str(approver_dir(create=False)))
    return tuple(os.path.normpath(path) for path in paths)


def _plan_json(plan: InnerPlan) -> dict[str, Any]:
    return asdict(plan)
