"""Puts a run together: the server's process, the policy, the relay and the event loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from mcpshield.policy import PassThrough, Policy
from mcpshield.relay import Relay
from mcpshield.supervisor import Child, LaunchSpec

if TYPE_CHECKING:
    from mcpshield.policy.redact import Redactor


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything `mcpshield run` was told, validated."""

    launch: LaunchSpec
    policy: Policy = field(default_factory=PassThrough)
    #: Hides the values the profile's [env] injected; None when it injected none.
    redactor: Redactor | None = None


def run_server(config: RunConfig) -> int:
    """Starts the server and relays until it has exited; returns the status to exit with."""
    child = Child(config.launch)
    relay = Relay(child, config.policy, redactor=config.redactor)
    try:
        return anyio.run(relay.run, backend="asyncio", backend_options=_loop_options())
    finally:
        # Idempotent: the relay already did this unless it failed before finishing.
        child.close()


def _loop_options() -> dict[str, object]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}
