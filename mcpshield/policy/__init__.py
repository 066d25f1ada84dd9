"""Pure checks: each takes a message and a context and returns a Decision; no I/O, no clock."""

from mcpshield.policy.decision import (
    ALLOW,
    Allow,
    Ask,
    Context,
    Decision,
    Deny,
    Direction,
    PassThrough,
    Policy,
    Rewrite,
)

__all__ = [
    "ALLOW",
    "Allow",
    "Ask",
    "Context",
    "Decision",
    "Deny",
    "Direction",
    "PassThrough",
    "Policy",
    "Rewrite",
]
