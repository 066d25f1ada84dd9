"""Trims the roots a client reports to the directories the profile lets the server see."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcpshield.policy.args import CompiledArgs, compile_conditions
from mcpshield.profile.model import ArgCondition, Globs


class RootsFilter:
    """Keeps a root only if it lies inside the `roots_within` of every profile that sets one."""

    def __init__(self, within: tuple[Globs | None, ...], resolve: Callable[[str], str] | None = None) -> None:
        self._checks: list[CompiledArgs] = []
        for dirs in within:
            if dirs is None:
                continue
            conditions = {"uri": ArgCondition(within=dirs)}
            if resolve is None:
                self._checks.append(compile_conditions(conditions, "allow"))
            else:
                self._checks.append(compile_conditions(conditions, "allow", resolve=resolve))

    @property
    def active(self) -> bool:
        return bool(self._checks)

    def keeps(self, root: Any) -> bool:
        if type(root) is not dict:
            return False
        return all(check.check({"uri": root.get("uri")}) is None for check in self._checks)
