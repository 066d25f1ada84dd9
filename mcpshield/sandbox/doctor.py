"""`mcpshield doctor`: what this machine can enforce (each sandbox backend, Landlock, user
namespaces, seccomp) and whether the keyring, the approver's socket and the audit log can work,
as a table with fixes, or JSON. Exit 0 when a profile's `[sandbox]`, whatever it asks, is
enforced here and the audit log and approver can work; else 1."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final, Literal, TextIO

from mcpshield.sandbox.probe import (
    FIX_APPARMOR,
    FIX_LANDLOCK,
    FIX_MAX_USERNS,
    FIX_USERNS_CLONE,
    FIX_WINDOWS,
    Capabilities,
    choose,
    probe,
)
from mcpshield.sandbox.spec import SandboxSpec

State = Literal["ok", "warn", "no", "n/a"]

#: The table fits 100 columns: name, state, then the detail wrapped in what is left.
WIDTH: Final = 100
NAME_WIDTH: Final = 18
STATE_WIDTH: Final = 7
#: What each Landlock ABI adds, and the Linux release that brought it.
LANDLOCK_LEVELS: Final = {
    1: "file access (Linux 5.13)",
    2: "rename/link across folders (5.19)",
    3: "truncate (6.2)",
    4: "TCP connect/bind ports (6.7)",
    5: "device ioctl (6.10)",
    6: "abstract socket and signal scoping (6.12)",
    7: "audit logging (6.15)",
}
#: The strictest profiles: no network, and a host list (the egress proxy); a read list.
_OFFLINE: Final = SandboxSpec(network=False, read=())
_HOST_LIST: Final = SandboxSpec(network=("example.org",), read=())
SANDBOX_EXEC_FIX: Final = 'sandbox-exec ships with macOS; without it only enforcement = "best_effort" starts a server'
_COLOURS: Final = {"ok": "\x1b[32m", "warn": "\x1b[33m", "no": "\x1b[31m", "n/a": "\x1b[2m"}


@dataclass(frozen=True, slots=True)
class Check:
    """One row: what was checked, its state, what was found, what to do (if anything), and
    whether it makes doctor exit 1."""

    name: str
    state: State
    detail: str
    fix: str = ""
    blocking: bool = False


def doctor(*, as_json: bool = False, out: TextIO = sys.stdout) -> int:
    """Probes afresh (updating the cache `run` uses), prints the report, returns the exit status."""
    caps = probe(refresh=True)
    rows = checks(caps)
    status = 1 if any(row.state == "no" and row.blocking for row in rows) else 0
    if as_json:
        report = {
            "platform": caps.platform,
            "kernel": caps.kernel,
            "uid": caps.uid,
            "exit_status": status,
            "checks": [asdict(row) for row in rows],
            "capabilities": asdict(caps),
        }
        out.write(json.dumps(report, indent=2) + "\n")
        return status
    colour = out.isatty() and "NO_COLOR" not in os.environ
    out.write(f"mcpshield doctor: {caps.platform} {caps.kernel}, uid {caps.uid}\n\n")
    out.write(render(rows, colour=colour))
    verdict = (
        "ok: any [sandbox] a profile asks for is enforced here"
        if status == 0
        else "a profile whose [sandbox] needs what is marked `no` above is refused here (see the fixes)"
    )
    out.write(f"\nresult: {verdict}\n")
    return status


def checks(caps: Capabilities) -> list[Check]:
    """Every row of the report, for these capabilities."""
    rows = [sandbox_check(caps), *backend_checks(caps)]
    return [*rows, keyring_check(), approver_check(), audit_check()]


def render(rows: list[Check], *, colour: bool = False) -> str:
    """The plain-text table (ANSI colours on the state only with `colour`)."""
    indent = " " * (NAME_WIDTH + STATE_WIDTH)
    lines = [f"{'CHECK':<{NAME_WIDTH}}{'STATE':<{STATE_WIDTH}}DETAIL"]
    for row in rows:
        state = f"{row.state:<{STATE_WIDTH}}"
        if colour:
            state = f"{_COLOURS[row.state]}{row.state}\x1b[0m" + " " * (STATE_WIDTH - len(row.state))
        wrap = textwrap.TextWrapper(WIDTH - len(indent), break_long_words=False, break_on_hyphens=False)
        text = wrap.wrap(row.detail) or [""]
        if row.fix:
            wrap.subsequent_indent = "  "
            text += wrap.wrap("fix: " + row.fix)
        lines.append(f"{row.name:<{NAME_WIDTH}}{state}{text[0]}")
        lines += [indent + line for line in text[1:]]
    return "\n".join(lines) + "\n"


def sandbox_check(caps: Capabilities) -> Check:
    """What backend = "auto" gives the strictest profiles: no network, and a host list."""
    offline, hosts = choose(_OFFLINE, caps), choose(_HOST_LIST, caps)
    if caps.platform == "win32":
        return Check("sandbox (auto)", "no", "Job Object limits only", FIX_WINDOWS, blocking=True)
    if not hosts.missing:
        detail = f"{hosts.reason}: enforces filesystem, network (none, or a host list), limits"
        return Check("sandbox (auto)", "ok", detail)
    fixes = "; ".join(dict.fromkeys(hosts.missing.values()))
    if not offline.missing:
        detail = f"{hosts.reason}: enforces filesystem, network = false, limits; not a host list"
        return Check("sandbox (auto)", "no", detail, fixes, blocking=True)
    unenforced = ", ".join(sorted(hosts.missing))
    return Check("sandbox (auto)", "no", f"{hosts.backend}: cannot enforce {unenforced}", fixes, blocking=True)


def backend_checks(caps: Capabilities) -> list[Check]:
    """A row for each backend, and on Linux for what they are made of."""
    rows: list[Check] = []
    if caps.platform != "linux":
        rows += [Check("bubblewrap", "n/a", "Linux only"), Check("landlock", "n/a", "Linux only")]
    else:
        if caps.bwrap_works:
            what = "new namespaces, no capabilities, no network: works here"
            rows.append(Check("bubblewrap", "ok", f"{caps.bwrap} {caps.bwrap_version}: {what}"))
        else:
            rows.append(Check("bubblewrap", "no", caps.bwrap_problem, caps.bwrap_fix))
        rows += [landlock_check(caps), seccomp_check(caps), userns_check(caps)]
    if caps.platform == "darwin":
        if caps.sandbox_exec:
            rows.append(Check("seatbelt", "ok", "/usr/bin/sandbox-exec present"))
        else:
            rows.append(Check("seatbelt", "no", "/usr/bin/sandbox-exec is missing", SANDBOX_EXEC_FIX))
    else:
        rows.append(Check("seatbelt", "n/a", "macOS only"))
    if caps.platform == "win32":
        rows.append(Check("job object", "ok", "kill on close and resource limits; no filesystem or network rules"))
    return rows


def landlock_check(caps: Capabilities) -> Check:
    abi = caps.landlock_abi
    if abi < 1:
        return Check("landlock", "no", "not available in this kernel", FIX_LANDLOCK)
    levels = ", ".join(f"{level} {what}" for level, what in LANDLOCK_LEVELS.items() if level <= abi)
    return Check("landlock", "ok", f"ABI {abi}; the levels add: {levels}")


def seccomp_check(caps: Capabilities) -> Check:
    if caps.seccomp:
        return Check("seccomp", "ok", "filters work: UDP and raw sockets can be refused where Landlock cannot")
    return Check("seccomp", "no", "no seccomp filters here (or not on this CPU architecture)")


def userns_check(caps: Capabilities) -> Check:
    """Whether unprivileged user namespaces (what bubblewrap needs without root) are allowed."""
    values = caps.userns
    root = "; as root, bubblewrap needs none" if caps.uid == 0 else ""
    if values.get("user.max_user_namespaces") == 0:
        return Check("user namespaces", "no", "disabled: user.max_user_namespaces = 0" + root, FIX_MAX_USERNS)
    if values.get("kernel.unprivileged_userns_clone") == 0:
        detail = "unprivileged ones disabled: kernel.unprivileged_userns_clone = 0" + root
        return Check("user namespaces", "no", detail, FIX_USERNS_CLONE)
    if values.get("kernel.apparmor_restrict_unprivileged_userns") == 1:
        detail = "restricted by AppArmor (kernel.apparmor_restrict_unprivileged_userns = 1)" + root
        return Check("user namespaces", "warn", detail, "" if caps.bwrap_works else FIX_APPARMOR)
    limit = values.get("user.max_user_namespaces")
    return Check("user namespaces", "ok", f"allowed (user.max_user_namespaces = {limit})" + root)


def keyring_check() -> Check:
    """The keyring backend `secret set` would use, judged as `mcpshield secret doctor` judges it."""
    from mcpshield.errors import SecretError
    from mcpshield.secrets import backend, bus

    bus.recover_for_this_platform(os.environ)  # as `secret doctor` and `run` do
    try:
        found = backend.check_backend(os.environ)
    except SecretError as err:
        return Check("keyring", "no", str(err), err.tip)
    if found.secure:
        return Check("keyring", "ok", f"{found.active} (secure)")
    if found.usable:
        why = found.refusals[0].refusal
        return Check("keyring", "warn", f"{found.active}: insecure ({why}), accepted by {backend.INSECURE_ENV}=1")
    refused = backend.refusal(found)
    assert refused is not None  # not usable
    return Check("keyring", "no", f"{refused}; only profiles with keyring secrets need it", refused.tip)


def approver_check() -> Check:
    """Where `mcpshield approvals` listens, and whether its folder is private to this user."""
    from mcpshield.approval import location
    from mcpshield.errors import ApprovalError

    try:
        folder = location.approver_dir(create=False)
        sock = location.socket_path(folder)
    except ApprovalError as err:
        return Check("approver socket", "no", str(err), err.tip, blocking=True)
    state = "folder private to you" if folder.exists() else "folder made 0700 on first use"
    return Check("approver socket", "ok", f"{sock} ({state})")


def audit_check() -> Check:
    """Whether the audit log's folder can be written (or made) by this user."""
    from mcpshield.audit.location import LOG_DIR_ENV, log_root

    root = log_root()
    existing = next((p for p in (root, *root.parents) if p.exists()), Path("/"))
    if existing == root and not root.is_dir():
        return Check("audit log", "no", f"{root} is not a folder", f"point {LOG_DIR_ENV} at a folder", blocking=True)
    if not os.access(existing, os.W_OK | os.X_OK):
        fix = f"make {existing} writable by you, or point {LOG_DIR_ENV} at a folder that is"
        return Check("audit log", "no", f"{root} cannot be written", fix, blocking=True)
    return Check("audit log", "ok", f"{root} ({'writable' if existing == root else 'made on first use'})")
