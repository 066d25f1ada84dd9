"""Launch-time resolution of a profile's [env] table: `keyring:NAME` from the OS keyring, `env:VAR`
from mcpshield's own environment, anything else literally; every value also goes to the redactor."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from mcpshield.errors import SecretError

KEYRING_PREFIX: Final = "keyring:"
ENV_PREFIX: Final = "env:"


@dataclass(frozen=True, slots=True, repr=False)
class ResolvedEnv:
    """What a profile's [env] table came to. Its repr names variables and labels, never values."""

    values: dict[str, str]
    """Variable name -> value, for the server's environment."""
    redact: dict[str, str]
    """Label -> value for every injected value: the secret's NAME for a keyring value, else the
    variable's name. The redactor itself ignores values too short to redact safely."""

    def __repr__(self) -> str:
        return f"ResolvedEnv(values={sorted(self.values)}, redact={sorted(self.redact)})"


def resolve_env(spec: Mapping[str, str], environ: Mapping[str, str]) -> ResolvedEnv:
    """Resolves every entry of `spec`; a variable missing from `environ` or a secret missing from
    the keyring is a SecretError naming all that are missing. The keyring is touched only if
    some entry is `keyring:` (and then the backend is checked and the session bus recovered)."""
    _require_variables(spec, environ)
    secrets = _keyring_values(_secret_names(spec))
    values: dict[str, str] = {}
    redact: dict[str, str] = {}
    for variable, value in spec.items():
        if value.startswith(KEYRING_PREFIX):
            label = value.removeprefix(KEYRING_PREFIX)
            values[variable] = redact[label] = secrets[label]
        elif value.startswith(ENV_PREFIX):
            values[variable] = redact[variable] = environ[value.removeprefix(ENV_PREFIX)]
        else:
            values[variable] = redact[variable] = value
    return ResolvedEnv(values, redact)


def _secret_names(spec: Mapping[str, str]) -> list[str]:
    return sorted({value.removeprefix(KEYRING_PREFIX) for value in spec.values() if value.startswith(KEYRING_PREFIX)})


def _require_variables(spec: Mapping[str, str], environ: Mapping[str, str]) -> None:
    wanted = {value.removeprefix(ENV_PREFIX): name for name, value in spec.items() if value.startswith(ENV_PREFIX)}
    missing = sorted(name for name in wanted if name not in environ)
    if missing:
        listed = ", ".join(f"{name} (for {wanted[name]})" for name in missing)
        raise SecretError(
            f"the profile takes {listed} from mcpshield's environment, which does not set "
            + ("them" if len(missing) > 1 else "it"),
            "set it in the environment that starts mcpshield (the client's `env` for the server, or the CI job), "
            "or store the value with `mcpshield secret set` and use keyring:NAME",
        )


def _keyring_values(names: list[str]) -> dict[str, str]:
    if not names:
        return {}
    from mcpshield.secrets import store

    found = {name: store.get(name) for name in names}
    missing = [name for name, value in found.items() if value is None]
    if missing:
        plural = len(missing) > 1
        commands = "; ".join(f"mcpshield secret set {name}" for name in missing)
        raise SecretError(
            f"the profile needs the secret{'s' if plural else ''} {', '.join(map(repr, missing))}, "
            f"which {'are' if plural else 'is'} not in the keyring",
            f"store {'each' if plural else 'it'} with {commands}",
        )
    return {name: value for name, value in found.items() if value is not None}
