"""Which keyring backend is active, and whether mcpshield may keep secrets in it: plaintext and
unrecommended backends are refused unless the user opts in (MCPSHIELD_INSECURE_KEYRING=1); null
and failing backends, which keep nothing, always."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from mcpshield.errors import SecretError

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend

#: Set to "1" to accept a backend mcpshield would refuse (public interface, see docs/profiles.md).
INSECURE_ENV: Final = "MCPSHIELD_INSECURE_KEYRING"
INSECURE_OPT_IN: Final = "1"
#: Backends that keep nothing: no opt-in makes them usable, since a secret "stored" there is lost.
BROKEN_BACKENDS: Final = {
    "keyring.backends.fail.Keyring": "no keyring backend is available on this system",
    "keyring.backends.null.Keyring": "the null backend keeps nothing",
}
#: Backends that keep secrets readable by anyone who can read a file; subclasses are refused too.
PLAINTEXT_BACKENDS: Final = {
    "keyrings.alt.file.PlaintextKeyring": "it keeps secrets base64-encoded in a plain file",
    "keyrings.alt.pyfs.PlaintextKeyring": "it keeps secrets base64-encoded in a plain file",
}
#: keyrings.alt modules whose backends are all files: the plaintext ones, and encrypted ones that
#: ask for their master password on a terminal a client-started server does not have.
FILE_BACKEND_MODULES: Final = ("keyrings.alt.file", "keyrings.alt.pyfs")


@dataclass(frozen=True, slots=True)
class Verdict:
    """One backend judged: its class path, its priority, why it is refused ("" if it is not), and
    whether it keeps nothing at all (then the opt-in does not help)."""

    backend: str
    priority: float | None
    refusal: str = ""
    broken: bool = False

    @property
    def secure(self) -> bool:
        return not self.refusal


@dataclass(frozen=True, slots=True)
class BackendCheck:
    """The active backend and the verdicts on what it stores in (a chainer's members, or itself)."""

    active: str
    verdicts: tuple[Verdict, ...]
    opted_in: bool
    keyring: KeyringBackend = field(repr=False, compare=False)

    @property
    def secure(self) -> bool:
        return bool(self.verdicts) and all(verdict.secure for verdict in self.verdicts)

    @property
    def usable(self) -> bool:
        """Secrets may be stored: the backend is secure, or the user accepted an insecure one that
        does keep them."""
        return self.secure or (self.opted_in and not any(verdict.broken for verdict in self.verdicts))

    @property
    def refusals(self) -> tuple[Verdict, ...]:
        return tuple(verdict for verdict in self.verdicts if not verdict.secure)


def check_backend(environ: Mapping[str, str]) -> BackendCheck:
    """Finds keyring's active backend (loading it if needed: PYTHON_KEYRING_BACKEND, keyring's
    config file, else the best one detected) and judges it, looking through a chainer."""
    import keyring

    try:
        active = keyring.get_keyring()
    except Exception as exc:  # a configured backend that fails to load raises anything at all
        raise SecretError(
            f"the keyring backend could not be loaded: {type(exc).__name__}: {exc}",
            "check PYTHON_KEYRING_BACKEND and keyring's keyringrc.cfg (`keyring diagnose` shows where it is)",
        ) from exc
    verdicts = tuple(judge(member) for member in _members(active)) or (
        Verdict(class_path(type(active)), None, "the chainer found no usable backend to chain", broken=True),
    )
    return BackendCheck(class_path(type(active)), verdicts, environ.get(INSECURE_ENV) == INSECURE_OPT_IN, active)


def judge(backend: KeyringBackend) -> Verdict:
    """A verdict on one (non-chainer) backend: refused if it is known to be insecure, if it is
    a keyrings.alt file backend, or if its priority is not positive (or cannot be read)."""
    cls = type(backend)
    path = class_path(cls)
    try:
        priority = float(cls.priority)
    except Exception as exc:  # keyring's convention: priority raises when a backend is not viable
        return Verdict(path, None, f"it is not usable here ({type(exc).__name__}: {exc})")
    for base in cls.__mro__:
        if class_path(base) in BROKEN_BACKENDS:
            return Verdict(path, priority, BROKEN_BACKENDS[class_path(base)], broken=True)
        if class_path(base) in PLAINTEXT_BACKENDS:
            return Verdict(path, priority, PLAINTEXT_BACKENDS[class_path(base)])
    if cls.__module__ in FILE_BACKEND_MODULES:
        return Verdict(path, priority, "it keeps secrets in a file guarded by a password typed on a terminal")
    if priority <= 0:
        return Verdict(path, priority, f"its priority is {priority:g}: keyring itself does not recommend it")
    return Verdict(path, priority)


def require_usable(check: BackendCheck) -> None:
    """Raises `refusal(check)` if there is one."""
    error = refusal(check)
    if error is not None:
        raise error


def refusal(check: BackendCheck) -> SecretError | None:
    """None if secrets may be stored in the backend `check` judged; else the error naming the
    backend and how to get a secure one."""
    if check.usable:
        return None
    refused = next((verdict for verdict in check.refusals if verdict.broken), check.refusals[0])
    where = refused.backend if refused.backend == check.active else f"{refused.backend} (chained by {check.active})"
    moot = f" ({INSECURE_ENV} cannot make a backend that keeps nothing usable)" if check.opted_in else ""
    return SecretError(
        f"the keyring backend {where} is refused: {refused.refusal}{moot}", how_to_fix(accept=not refused.broken)
    )


def how_to_fix(*, accept: bool = True) -> str:
    """What gets a secure backend on this platform, and (with `accept`) how to accept an insecure
    one instead."""
    if sys.platform == "darwin":
        real = "the macOS Keychain works out of the box: unset PYTHON_KEYRING_BACKEND and any keyringrc.cfg"
    elif sys.platform == "win32":
        real = "Windows Credential Manager works out of the box: unset PYTHON_KEYRING_BACKEND and any keyringrc.cfg"
    else:
        real = (
            "install and unlock gnome-keyring or KWallet (a Secret Service on your session D-Bus); "
            "on a headless machine, an encrypted file backend such as keyrings.cryptfile "
            "(PYTHON_KEYRING_BACKEND=keyrings.cryptfile.cryptfile.CryptFileKeyring)"
        )
    opt_in = f"; or accept this backend with {INSECURE_ENV}={INSECURE_OPT_IN}" if accept else ""
    return f"{real}{opt_in}; then `mcpshield secret doctor` checks the result"


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _members(active: KeyringBackend) -> list[KeyringBackend]:
    """The backends secrets go to and come from: a chainer's members (it reads from all of them),
    or the backend itself."""
    from keyring.backends.chainer import ChainerBackend

    if not isinstance(active, ChainerBackend):
        return [active]
    return list(type(active).backends)
