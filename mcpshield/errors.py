"""The one error tree of mcpshield; every message is written for the user.

    ShieldError                 anything mcpshield refuses to do, with a `tip`
    ├── UsageError              the command line does not say something runnable
    ├── LaunchError             the server could not be started
    ├── ProfileError            a profile is missing, malformed, ambiguous or cannot be written
    ├── SecretError             a secret cannot be stored, found or injected (the value is never named)
    ├── AuditError              the audit log cannot be written or read
    ├── ApprovalError           the terminal approver cannot start or its socket cannot be trusted
    ├── SandboxError            the profile's sandbox cannot be enforced here, or is malformed
    └── UnsupportedPlatform     this OS lacks what the feature needs

The CLI prints `mcpshield: <message>` and `Tip: <tip>` and exits with `exit_code`.
"""

from __future__ import annotations


class ShieldError(Exception):
    """A refusal the user can act on: `str(err)` says what, `tip` says what to do next."""

    exit_code = 2

    def __init__(self, message: str, tip: str) -> None:
        super().__init__(message)
        self.tip = tip


class UsageError(ShieldError):
    """The command line is malformed or incomplete."""

    exit_code = 2


class LaunchError(ShieldError):
    """The wrapped server could not be started (not found, not executable, ...)."""

    def __init__(self, message: str, tip: str, exit_code: int = 127) -> None:
        super().__init__(message, tip)
        self.exit_code = exit_code


class ProfileError(ShieldError):
    """A profile cannot be used: not found, malformed (the message names file:line and key),
    ambiguous, or (for `profile init`) cannot be written."""

    exit_code = 2


class SecretError(ShieldError):
    """A secret cannot be stored, read, removed or injected: the keyring backend is missing or
    insecure, a secret or a variable the profile injects is not set, or the secrets index is
    corrupt. Messages name secrets, never their values."""

    exit_code = 3


class AuditError(ShieldError):
    """The audit log cannot be created, written or read (a broken chain is `audit verify`'s
    finding, exit 1, not an error)."""

    exit_code = 4


class ApprovalError(ShieldError):
    """The terminal approver cannot listen (another one is running, its folder is not private to
    the user) or a wrapper cannot trust the approver it would talk to."""

    exit_code = 5


class SandboxError(ShieldError):
    """The profile's `[sandbox]` asks for isolation this machine cannot give (and enforcement is
    `required`), or names paths that cannot be set up; the server is not started."""

    exit_code = 126


class UnsupportedPlatform(ShieldError):
    """The running OS lacks a primitive the feature needs."""

    exit_code = 3
