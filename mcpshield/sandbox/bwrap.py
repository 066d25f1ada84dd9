"""bubblewrap's command line for a SandboxSpec: new namespaces and no capabilities, a filesystem
made of binds (the system directories, `read`, `write`), `deny` paths hidden last, and no
network unless the profile allows it."""

from __future__ import annotations

import glob
import os
import stat
import sys
from collections.abc import Sequence
from typing import Final

from mcpshield.errors import SandboxError
from mcpshield.sandbox.mounts import MountPlan
from mcpshield.sandbox.spec import PRIVATE_TMP, SandboxSpec

BWRAP: Final = "/usr/bin/bwrap"
#: Always: a session of its own (no TIOCSTI into the caller's terminal); SIGKILL when its parent
#: dies; its own pid (the tree dies with its pid 1), IPC, hostname and cgroup view; and no
#: capabilities, since a sandboxed root keeping them could remount `/` writable.
BASE_FLAGS: Final = (
    "--new-session", "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
    "--unshare-cgroup-try", "--cap-drop", "ALL",
)  # fmt: skip
#: The sandbox's own /tmp: the host's (other programs' sockets and files) is never visible.
#: What every program needs to run, where present. /run/current-system: NixOS's profile links.
SYSTEM_DIRS: Final = (
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt",
    "/nix/store", "/run/current-system",
)  # fmt: skip
#: Secrets only root may read, hidden in every sandbox: as root without capabilities the owner's
#: permission bits still let it read them. Globs are expanded when the sandbox is made.
ROOT_SECRETS: Final = (
    "/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/sudoers", "/etc/sudoers.d",
    "/etc/ssh/ssh_host_*_key", "/etc/ssl/private", "/etc/security/opasswd", "/etc/krb5.keytab",
    "/etc/NetworkManager/system-connections", "/etc/wireguard", "/etc/ipsec.secrets",
    "/etc/ppp/chap-secrets", "/etc/ppp/pap-secrets", "/etc/libvirt/secrets",
)  # fmt: skip
#: The file a denied file is replaced with: empty, mode 0000, so reading it fails even for its
#: owner (root without capabilities included) rather than returning nothing.
DENY_STUB_NAME: Final = "denied-file"


def bwrap_argv(
    spec: SandboxSpec,
    inner_argv: Sequence[str],
    *,
    system_read: Sequence[str],
    extra_write: Sequence[str],
    cwd: str | None,
    proxy_socket: str | None,
    bwrap: str = BWRAP,
) -> list[str]:
    """bwrap's argv running `inner_argv` confined by `spec`. `system_read` is readable, `write`
    and `extra_write` writable (a missing one is a SandboxError), `deny` and ROOT_SECRETS hidden.
    With a host list, `proxy_socket` (the egress proxy's Unix socket) is bound at its own path
    into a network namespace that has nothing else. `cwd` must be visible inside."""
    plan = _plan(spec, system_read, extra_write, proxy_socket)
    argv = [bwrap, *BASE_FLAGS]
    if spec.network is not True:
        argv.append("--unshare-net")
    argv += _mount_args(plan, read_only_root=spec.read is not None)
    if cwd is not None:
        argv += ["--chdir", _checked_cwd(plan, cwd)]
    return [*argv, "--", *inner_argv]


def root_secrets() -> tuple[str, ...]:
    """ROOT_SECRETS with their globs expanded (hidden by every Linux backend)."""
    found: list[str] = []
    for pattern in ROOT_SECRETS:
        found += sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    return tuple(found)


def system_read_dirs() -> tuple[str, ...]:
    """The system directories a program needs (those present), the resolver's configuration file
    when /etc/resolv.conf leads outside /etc, and mcpshield's own Python and package (the
    in-sandbox launcher runs `python -m mcpshield.sandbox.inner`)."""
    if sys.platform == "darwin":
        from mcpshield.sandbox.seatbelt import MACOS_SYSTEM_READ

        found = [path for path in MACOS_SYSTEM_READ if os.path.lexists(path)]
        found += _darwin_user_cache()
    else:
        found = [path for path in SYSTEM_DIRS if os.path.lexists(path)]
        resolv = os.path.realpath("/etc/resolv.conf")  # systemd-resolved: /run/systemd/resolve/...
        if not resolv.startswith("/etc/") and os.path.isfile(resolv):
            found.append(resolv)  # the file alone: the folder beside it is the resolver's business
    import mcpshield

    package = os.path.dirname(os.path.realpath(mcpshield.__file__))
    pythons = (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)
    found += [*pythons, os.path.dirname(os.path.realpath(sys.executable)), package]
    return tuple(dict.fromkeys(os.path.normpath(path) for path in found))


def _darwin_user_cache() -> list[str]:
    """The user's own cache folder under /var/folders (a sibling of $TMPDIR, `C` beside `T`), where
    macOS keeps per-user caches programs read at start-up."""
    tmp = os.path.realpath(os.environ.get("TMPDIR", ""))
    if not tmp.startswith("/private/var/folders/") or os.path.basename(tmp) != "T":
        return []
    cache = os.path.join(os.path.dirname(tmp), "C")
    return [cache] if os.path.isdir(cache) else []


def deny_stub() -> str:
    """The empty mode-0000 file denied files are replaced with, made in mcpshield's cache folder
    (re-made if anything about it is off)."""
    from mcpshield.sandbox.location import cache_root

    folder = cache_root()
    path = folder / DENY_STUB_NAME
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _is_stub(path):
            temporary = folder / f".{DENY_STUB_NAME}.{os.getpid()}"
            temporary.unlink(missing_ok=True)
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0))
            os.chmod(temporary, 0)  # whatever the umask did
            os.replace(temporary, path)
    except OSError as exc:
        raise SandboxError(
            f"cannot make {path}, which hides denied files in the sandbox: {exc.strerror or exc}",
            "make mcpshield's cache folder writable by you, or point MCPSHIELD_CACHE_DIR at one that is",
        ) from None
    return str(path)


def _is_stub(path: os.PathLike[str]) -> bool:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    return (
        stat.S_ISREG(info.st_mode) and info.st_size == 0 and not info.st_mode & 0o7777 and info.st_uid == os.geteuid()
    )


def _plan(
    spec: SandboxSpec, system_read: Sequence[str], extra_write: Sequence[str], proxy_socket: str | None
) -> MountPlan:
    plan = MountPlan()
    if spec.read is None:
        plan.expose("/", "ro")
    for own in ("/dev", "/proc", PRIVATE_TMP):
        plan.own(own)
    for path in (*spec.write, *extra_write):  # first: a write path wins over a read path around it
        plan.expose(path, "rw", required=True)
    for path in (*system_read, *(spec.read or ())):
        plan.expose(path, "ro")
    if not isinstance(spec.network, bool):
        if proxy_socket is None or not os.path.exists(proxy_socket):
            raise SandboxError(
                f"the egress proxy's socket {proxy_socket} is missing, so the host list cannot be enforced",
                "this is a bug in mcpshield: please report it with the profile's [sandbox]",
            )
        plan.expose(proxy_socket, "ro")
    plan.settle_links()
    for path in root_secrets():
        plan.hide(path)
    for path in spec.deny:
        plan.hide(path)
    return plan


def _mount_args(plan: MountPlan, *, read_only_root: bool) -> list[str]:
    """The mounts as bwrap options, in order. Once the links are in place bwrap's own root is made
    read-only (nothing can be created beside the binds). A hidden folder becomes an empty
    read-only tmpfs nobody may open; a hidden file, the mode-0000 stub."""
    args: list[str] = []
    for mount in plan.ordered_binds():
        if mount.kind == "own":
            args += [_OWN_OPTION.get(mount.dest, "--tmpfs"), mount.dest]
        else:
            args += ["--ro-bind" if mount.kind == "ro" else "--bind", mount.dest, mount.dest]
    for link in plan.links:
        args += ["--symlink", link.target, link.dest]
    if read_only_root:
        args += ["--remount-ro", "/"]
    hidden = plan.ordered_hidden()
    stub = deny_stub() if any(mount.target == "file" for mount in hidden) else ""
    for mount in hidden:
        if mount.target == "dir":
            args += ["--perms", "0000", "--tmpfs", mount.dest, "--remount-ro", mount.dest]
        else:
            args += ["--ro-bind", stub, mount.dest]
    return args


#: How bwrap makes each filesystem of the sandbox's own (a private tmpfs for anything else).
_OWN_OPTION: Final = {"/dev": "--dev", "/proc": "--proc"}


def _checked_cwd(plan: MountPlan, cwd: str) -> str:
    where = plan.resolve(os.path.abspath(cwd))
    if where is None or not plan.visible(where):
        raise SandboxError(
            f"the server's working directory {cwd} is not visible in its sandbox",
            "start it from a directory the profile's [sandbox] read or write names, or add the directory there",
        )
    return cwd
