"""The sandbox as the launch needs it: a profile's `[sandbox]` with `~` expanded and every path
absolute, and the plan the in-sandbox launcher (`mcpshield.sandbox.inner`) carries out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

Enforcement = Literal["required", "best_effort"]
BackendName = Literal["auto", "bubblewrap", "landlock", "seatbelt", "none"]

#: What `deny` holds when a profile does not say: where credentials usually live, and the
#: sockets that hand out more power than the server's own (a container engine is root; the
#: per-user runtime folder holds the session bus, the keyring and the ssh and gpg agents).
DEFAULT_DENY: Final = (
    "~/.ssh", "~/.aws", "~/.gnupg", "~/.config/gcloud", "~/.azure", "~/.kube", "~/.docker",
    "~/.netrc", "~/.pgpass", "~/.git-credentials", "~/.config/gh", "~/.npmrc", "~/.pypirc",
    "~/.password-store", "~/.local/share/keyrings", "~/.mozilla", "~/.config/google-chrome",
    "~/.config/chromium",
    "/run/user", "/run/docker.sock", "/var/run/docker.sock", "/run/containerd", "/run/podman",
)  # fmt: skip


#: What `network_deny` holds when a profile does not say: the link-local ranges where clouds
#: serve instance credentials (169.254.169.254, fd00:ec2::254; Alibaba 100.100.100.200).
DEFAULT_NETWORK_DENY: Final = ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254", "100.100.100.200")


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """A profile's `[sandbox]`, resolved: every path absolute with `~` expanded (not required to
    exist; a missing `read`/`deny` path is skipped, a missing `write` path is an error at launch)."""

    enforcement: Enforcement = "required"
    backend: BackendName = "auto"
    #: True: any network; False: none (loopback of its own at most); a tuple: the hosts the
    #: egress proxy lets through (entries as in a rule's `hosts`: names, `*.` globs, CIDR, `*`).
    network: bool | tuple[str, ...] = False
    #: Hosts the proxy refuses even when `network` lists them (checked first).
    network_deny: tuple[str, ...] = ()
    #: Directories (or files) the server may read; None: the whole filesystem except `deny`.
    #: The system directories a program needs to run (/usr, /etc, ...) are always readable.
    read: tuple[str, ...] | None = None
    #: Directories (or files) the server may write (and read).
    write: tuple[str, ...] = ()
    #: Neither readable nor writable, whatever `read` and `write` say.
    deny: tuple[str, ...] = ()
    memory_mb: int = 0
    cpu_seconds: int = 0
    max_open_files: int = 1024


@dataclass(frozen=True, slots=True)
class Forward:
    """Inside a network namespace: a loopback TCP port relayed to the egress proxy's Unix socket."""

    port: int
    unix_path: str


@dataclass(frozen=True, slots=True)
class InnerPlan:
    """What `python -m mcpshield.sandbox.inner` does before it execs the server, in this order:
    start the forwarder (if any), set the rlimits, install seccomp, restrict itself with Landlock.
    Serialised as JSON into the environment variable INNER_PLAN_ENV, which the launcher removes
    before the exec."""

    argv: tuple[str, ...]
    #: Landlock restricts the filesystem when any of read, write or deny is given; then a read
    #: of None means "/" (everything readable but `deny`). Nothing given: no filesystem rules.
    landlock_read: tuple[str, ...] | None = None
    landlock_write: tuple[str, ...] = ()
    #: Paths carved out of the read and write trees (see landlock.restrict).
    landlock_deny: tuple[str, ...] = ()
    #: Landlock (ABI ≥ 4): None: TCP not restricted; a tuple: the only ports connect() may reach.
    tcp_connect_ports: tuple[int, ...] | None = None
    #: seccomp: "none"; "no_inet" (no AF_INET/AF_INET6/AF_PACKET sockets at all); "tcp_only"
    #: (AF_INET/AF_INET6 only as SOCK_STREAM, no AF_PACKET, no raw sockets).
    seccomp: Literal["none", "no_inet", "tcp_only"] = "none"
    rlimit_nofile: int = 0  # 0: leave as is
    rlimit_cpu: int = 0
    forward: Forward | None = None
    #: Dimensions the launcher must enforce or fail (exit 126 with a one-line reason on stderr);
    #: the others it applies where the kernel allows and reports on stderr once when it cannot.
    required: tuple[str, ...] = field(default=())


def inside(path: str, folder: str) -> bool:
    """Whether the absolute, normalised `path` is `folder` or lies beneath it (everything lies
    beneath `/`)."""
    return folder in ("/", path) or path.startswith(folder.rstrip("/") + "/")


#: The dimensions a sandbox restricts, as `missing` and the launcher's `required` name them.
DIMENSIONS: Final = ("filesystem", "network", "limits")
#: Where bubblewrap mounts a tmpfs of the sandbox's own: the host's /tmp is not visible there.
PRIVATE_TMP: Final = "/tmp"  # noqa: S108 - a mount point named, not a file made there

#: The environment variable carrying the InnerPlan as JSON.
INNER_PLAN_ENV: Final = "MCPSHIELD_SANDBOX_PLAN"
