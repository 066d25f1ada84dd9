"""`mcpshield secret doctor`: which keyring backend is active, whether it may hold secrets, whether
the session bus had to be recovered, where the index is, and what to do next."""

from __future__ import annotations

import os
import sys
from typing import Final, TextIO

from mcpshield.errors import SecretError
from mcpshield.secrets import backend, bus, index, store

#: The item the doctor reads to see that the keyring answers (and unlocks); it need not exist.
PROBE_NAME: Final = "mcpshield-doctor-probe"
#: Width of the label column.
_LABEL: Final = 26


def doctor(out: TextIO = sys.stdout) -> int:
    """Prints the report; 0 if secrets can be stored, else raises the first problem found (its
    message and Tip say what to do)."""
    problems: list[SecretError] = []
    _report_bus(out, bus.recover_for_this_platform(os.environ))
    check = _report_backend(out, problems)
    if check is not None and check.usable:
        _report_probe(out, problems)
    _report_index(out, problems)
    if problems:
        _line(out, "result", "secrets cannot be stored until the problem below is fixed")
        raise problems[0]
    _line(out, "result", "ok: `mcpshield secret set NAME` stores one; a profile's [env] uses it as keyring:NAME")
    return 0


def _line(out: TextIO, label: str, text: str) -> None:
    out.write(f"{label + ':':<{_LABEL}}{text}\n")


def _report_bus(out: TextIO, recovered: tuple[str, ...]) -> None:
    if sys.platform != "linux":
        _line(out, "session bus", "not needed on this platform")
        return
    for variable in (bus.BUS_ENV, bus.RUNTIME_ENV):
        value = os.environ.get(variable)
        if variable in recovered:
            state = f"{value} (recovered: it was unset, as GUI clients leave it)"
        elif value:
            state = f"{value} (from the environment)"
        else:
            state = f"unset, and no session of yours under {bus.RUNTIME_BASE} to recover it from"
        _line(out, variable, state)


def _report_backend(out: TextIO, problems: list[SecretError]) -> backend.BackendCheck | None:
    try:
        check = backend.check_backend(os.environ)
    except SecretError as error:
        _line(out, "backend", "cannot be loaded")
        problems.append(error)
        return None
    if [verdict.backend for verdict in check.verdicts] == [check.active]:
        _line(out, "backend", _describe(check.verdicts[0]))
    else:  # a chainer: secrets are read from every member and stored in the first
        _line(out, "backend", check.active)
        for verdict in check.verdicts:
            _line(out, "  chains", _describe(verdict))
    if check.secure:
        _line(out, "secure", "yes")
    elif check.usable:
        reason = check.refusals[0].refusal
        _line(out, "secure", f"NO ({reason}); accepted because {backend.INSECURE_ENV}={backend.INSECURE_OPT_IN}")
    else:
        _line(out, "secure", f"no: {check.refusals[0].refusal}")
        refused = backend.refusal(check)
        assert refused is not None  # the check is not usable
        problems.append(refused)
    return check


def _describe(verdict: backend.Verdict) -> str:
    return f"{verdict.backend} (priority {'unknown' if verdict.priority is None else f'{verdict.priority:g}'})"


def _report_probe(out: TextIO, problems: list[SecretError]) -> None:
    try:
        store.get(PROBE_NAME)
    except SecretError as error:
        _line(out, "keyring answers", "no")
        problems.append(error)
        return
    _line(out, "keyring answers", "yes")


def _report_index(out: TextIO, problems: list[SecretError]) -> None:
    path = index.index_path()
    try:
        entries = index.read()
    except SecretError as error:
        _line(out, "index", f"{path} (corrupt)")
        problems.append(error)
        return
    state = f"{len(entries)} secret(s)" if path.exists() else "not created yet"
    _line(out, "index", f"{path} ({state}; names and times only)")
