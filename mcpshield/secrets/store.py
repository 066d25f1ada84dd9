"""One keyring item per secret, under the fixed service name `mcpshield` with the secret's NAME as
the user name; every keyring failure is translated here, once, into a SecretError."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

from mcpshield.errors import SecretError
from mcpshield.profile.model import SECRET_NAME
from mcpshield.secrets import backend, bus

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend

#: The keyring service every secret is stored under; fixed, so that items never move (Windows'
#: credential store keys items by service and user name).
SERVICE: Final = "mcpshield"
#: A backend's own error text is quoted in messages up to this length; longer is noise.
MAX_QUOTED_CHARS: Final = 200


def ready() -> backend.BackendCheck:
    """The active backend's check, after the session bus was recovered (Linux); a SecretError
    naming the backend and how to get a secure one unless secrets may be stored in it."""
    bus.recover_for_this_platform(os.environ)
    check = backend.check_backend(os.environ)
    backend.require_usable(check)
    return check


def check_name(name: str) -> str:
    if not SECRET_NAME.fullmatch(name):
        raise SecretError(
            f"{name!r} is not a secret name",
            "a secret name is 1 to 128 letters, digits, '.', '_' and '-', starting with a letter or digit",
        )
    return name


def get(name: str) -> str | None:
    """The secret's value, or None if the keyring has no item for it."""
    check_name(name)
    keyring = ready().keyring
    try:
        return keyring.get_password(SERVICE, name)
    except Exception as exc:  # backends raise what their platform raises; translated once, here
        raise _failure("read", name, keyring, exc) from exc


def set(name: str, value: str) -> None:
    """Stores (or replaces) the secret's value (named for its verb: callers write `store.set`)."""
    check_name(name)
    keyring = ready().keyring
    try:
        keyring.set_password(SERVICE, name, value)
    except Exception as exc:  # as in get; the chain is dropped: a backend's error may hold the value
        raise _failure("store", name, keyring, exc, value) from None


def delete(name: str) -> bool:
    """Removes the secret from the keyring; False if there was no such item."""
    if get(name) is None:  # backends disagree on how they report a missing item; asking first does not
        return False
    keyring = ready().keyring
    try:
        keyring.delete_password(SERVICE, name)
    except Exception as exc:
        raise _failure("remove", name, keyring, exc) from exc
    return True


def _failure(verb: str, name: str, keyring: KeyringBackend, exc: Exception, value: str = "") -> SecretError:
    detail = str(exc).replace(value, "[REDACTED]") if value else str(exc)
    if len(detail) > MAX_QUOTED_CHARS:
        detail = detail[:MAX_QUOTED_CHARS] + "..."
    return SecretError(
        f"cannot {verb} the secret {name!r} in the keyring ({backend.class_path(type(keyring))}): "
        f"{type(exc).__name__}: {detail}",
        _tip(exc),
    )


def _tip(exc: Exception) -> str:
    from keyring.errors import KeyringLocked

    if isinstance(exc, KeyringLocked):
        return "unlock your keyring (log in to the desktop session, or unlock it in Seahorse or KWallet) and try again"
    return "`mcpshield secret doctor` checks the keyring backend and says what to do"
