"""What the model reads when a call under `ask` does not run: words it can pass on to the user,
saying what to do next."""

from __future__ import annotations

from mcpshield.approval.client import Outcome
from mcpshield.approval.protocol import Request


def declined(request: Request) -> str:
    return f"mcpshield refused this call to {request.tool}: the user declined in the client"


def refusal(request: Request, outcome: Outcome, *, retry_window_s: float) -> str:
    """Why the call did not run. A timeout at the terminal approver says the request stays
    there for `request.late_s` and that an approval then lets the same call run when it comes
    again within `retry_window_s`."""
    if outcome.decision == "deny":
        said = f": {outcome.reason}" if outcome.reason else ""
        where = "at the terminal" if outcome.channel == "tty" else "in `mcpshield approvals`"
        return f"mcpshield refused this call: the user denied {request.tool} {where}{said}"
    if outcome.decision == "timeout":
        waited = f"mcpshield refused this call: the user did not answer within {request.timeout_s:g} s."
        if request.late_s > 0:
            return (
                f"{waited} Ask the user to approve {request.tool} in `mcpshield approvals`, where it stays for "
                f"{request.late_s:g} s more, then call it again with the same arguments: once approved, that "
                f"call runs without asking if it comes within {retry_window_s:g} s."
            )
        return f"{waited} Call it again to ask the user again."
    why = f" ({outcome.reason})" if outcome.reason else ""
    return (
        f"mcpshield refused this call: the profile says a person must approve {request.tool}, and no approver "
        f"is available{why}. Ask the user to run `mcpshield approvals` in a terminal, then call it again"
    )
