"""Puts a run together: the audit log, the server's process, the policy, the relay and the event loop."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mcpshield import __version__
from mcpshield.errors import AuditError, ShieldError
from mcpshield.policy import PassThrough, Policy
from mcpshield.supervisor import Child, LaunchSpec

if TYPE_CHECKING:
    from mcpshield.approval.broker import ApprovalSetup
    from mcpshield.audit.trail import AuditTrail, Recording
    from mcpshield.audit.writer import AuditLog
    from mcpshield.policy.redact import Redactor
    from mcpshield.relay import Relay
    from mcpshield.sandbox.launch import SandboxedLaunch


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """Whether and how the session is audited (None in RunConfig: not at all)."""

    recording: Recording
    #: The profile in force, as session_start shows it (None: `--profile none`).
    profile: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything `mcpshield run` was told, validated."""

    launch: LaunchSpec
    policy: Policy = field(default_factory=PassThrough)
    #: Hides the values the profile's [env] injected; None when it injected none.
    redactor: Redactor | None = None
    audit: AuditConfig | None = None
    #: Where calls the profile says to `ask` about are put to a person; None: no profile.
    approvals: ApprovalSetup | None = None
    #: The OS sandbox the server starts in (its launch replaces `launch`); None: unsandboxed.
    sandbox: SandboxedLaunch | None = None


def run_server(config: RunConfig) -> int:
    """Opens the audit log, starts the server and relays until it has exited; returns the
    status to exit with."""
    started = time.monotonic()
    sandbox = config.sandbox
    try:
        log = _open_log(config) if config.audit is not None else None
    except BaseException:
        if sandbox is not None:  # its proxy socket and folder are already made
            sandbox.close()
        raise
    trail = _trail(log, config.audit) if log is not None and config.audit is not None else None
    status: int | None = None
    why = "mcpshield failed"
    try:
        child = Child(config.launch if sandbox is None else sandbox.launch)
        # Only now: the server boots while the relay and the event loop are imported.
        import anyio

        from mcpshield.relay import Relay

        relay = Relay(child, config.policy, redactor=config.redactor, trail=trail, approvals=config.approvals)
        try:
            main = relay.run if sandbox is None or sandbox.egress is None else _with_egress(relay, sandbox, log, trail)
            status = anyio.run(main, backend="asyncio", backend_options=_loop_options())
            why = relay.why_ended
            if sandbox is not None and sandbox.hint and status:
                sys.stderr.write(f"mcpshield: the server failed in its sandbox. Tip: {sandbox.hint}\n")
            if child.memory_killed_mib is not None:
                why = f"the server used {child.memory_killed_mib} MiB, over the sandbox's memory_mb: killed"
                sys.stderr.write(f"mcpshield: {why}\n")
        finally:
            # Idempotent: the relay already did this unless it failed before finishing.
            child.close()
    except ShieldError as err:
        why = str(err)
        raise
    finally:
        if sandbox is not None:
            sandbox.close()
        if log is not None:
            _close_log(log, trail, status, why, time.monotonic() - started)
    assert status is not None
    return status


def _open_log(config: RunConfig) -> AuditLog | None:
    """The session's log, its first line written; None if it cannot be and the profile says
    to go on without one (else the AuditError stops the launch)."""
    from mcpshield.audit.location import log_root
    from mcpshield.audit.writer import AuditLog

    assert config.audit is not None
    recording = config.audit.recording
    try:
        log = AuditLog(log_root(), config.redactor, recording.max_bytes)
        log.start(
            {
                "mcpshield": __version__,
                "pid": os.getpid(),
                "command": list(config.launch.argv),
                "profile": config.audit.profile,
                "sandbox": "none" if config.sandbox is None else config.sandbox.summary,
                "record": {"arguments": recording.arguments, "results": recording.results},
            }
        )
    except AuditError as err:
        if recording.on_failure == "stop":
            raise
        sys.stderr.write(f"mcpshield: running without an audit log, as the profile allows: {err}\n")
        return None
    return log


def _with_egress(
    relay: Relay, sandbox: SandboxedLaunch, log: AuditLog | None, trail: AuditTrail | None
) -> Callable[[], Awaitable[int]]:
    """The relay's run with the egress proxy served beside it, its decisions in the audit log
    (and, as for calls, none allowed while the log cannot be written and the profile says stop)."""
    import anyio

    from mcpshield.sandbox.proxy import EgressProxy, ProxyDecision

    egress = sandbox.egress
    assert egress is not None

    def record(decision: ProxyDecision) -> None:
        if log is not None:
            log.record("egress", decision.as_event())
            log.hand_over()

    def report(line: str) -> None:
        sys.stderr.write(f"mcpshield: egress proxy: {line}\n")

    async def main() -> int:
        stopped = (lambda: trail.stops_calls) if trail is not None else None
        proxy = EgressProxy(egress.allow, egress.deny, record, on_error=report, stopped=stopped)
        async with anyio.create_task_group() as tg:
            tg.start_soon(proxy.serve, egress.sock)
            status = await relay.run()
            tg.cancel_scope.cancel()
        return status

    return main


def _trail(log: AuditLog, audit: AuditConfig) -> AuditTrail:
    from mcpshield.audit.trail import AuditTrail

    return AuditTrail(log, audit.recording)


def _close_log(log: AuditLog, trail: AuditTrail | None, status: int | None, why: str, duration: float) -> None:
    log.close(
        {
            "exit_status": status,
            "why": why,
            "requests": dict(trail.counts) if trail is not None else {},
            "redactions": trail.redactions if trail is not None else 0,
            "duration_s": round(duration, 3),
        }
    )
    if log.failed is not None:
        sys.stderr.write(f"mcpshield: the audit log {log.path} could not be written completely: {log.failed}\n")


def _loop_options() -> dict[str, object]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}
