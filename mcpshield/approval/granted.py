"""What lets a call under `ask` run without asking anyone: this session's approvals, the
profile's "always" rules, and late approvals waiting for their retry."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from mcpshield.approval.client import Outcome

Key = tuple[str, str]  # (tool, SHA-256 of the canonical arguments)


@dataclass(eq=False)
class Granted:
    """What lets a call run without asking: this session's and the profile's approvals, and
    late approvals waiting for their retry (until a monotonic time)."""

    session: set[Key] = field(default_factory=set)
    always: set[Key] = field(default_factory=set)
    late: dict[Key, tuple[float, Outcome]] = field(default_factory=dict)

    def take(self, key: Key) -> dict[str, Any] | None:
        """The approval the call runs on, if it needs nobody; a late one is used up."""
        late = self.late.pop(key, None)
        if late is not None and late[0] > time.monotonic():
            outcome = late[1]
            return {"channel": outcome.channel, "approver_uid": outcome.approver_uid, "decision": outcome.decision,
                    "late": True, "wait_ms": 0}  # fmt: skip
        if key in self.session:
            return {"channel": "session", "approver_uid": None, "decision": "session"}
        if key in self.always:
            return {"channel": "profile", "approver_uid": None, "decision": "always", "rule": "approval.always"}
        return None
