"""What one profile says about a tool call, a resource or a prompt: lists, rules and defaults.

Pure: a judge is built once from a profile and answers from the name and the arguments alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Final

from mcpshield.policy.args import CompiledArgs, Mismatch, compile_conditions
from mcpshield.profile.model import Action, NamedSection, Profile, Rule

ALLOW: Final = "allow"
ASK: Final = "ask"
DENY: Final = "deny"


@dataclass(frozen=True, slots=True)
class Verdict:
    """An action and what decided it: `rule` names the list or rule (for the audit log), and
    `why` is said to the model when the action refuses."""

    action: Action
    rule: str
    why: str | None = None


def matches_any(name: str, globs: Sequence[str]) -> bool:
    return any(fnmatchcase(name, glob) for glob in globs)


class _CompiledRule:
    __slots__ = ("action", "args", "label", "reason", "tools")

    def __init__(self, index: int, rule: Rule, compile_args: Callable[[Rule], CompiledArgs]) -> None:
        self.label = f"rules[{index}]"
        self.tools = rule.tool
        self.action = rule.action
        self.reason = rule.reason
        self.args = compile_args(rule)

    def names(self, tool: str) -> bool:
        return matches_any(tool, self.tools)


class ToolJudge:
    """One profile's decision on each tool: `deny` list, then rules in order (first match wins),
    then the `ask` and `allow` lists, then the default."""

    def __init__(self, profile: Profile, resolve: Callable[[str], str] | None = None) -> None:
        tools = profile.tools
        self.name = profile.server.name
        self._deny = tools.deny
        self._ask = tools.ask
        self._allow = tools.allow
        self._default = tools.default
        self.strict_args = tools.strict_args

        def compile_args(rule: Rule) -> CompiledArgs:
            if resolve is None:
                return compile_conditions(rule.args, rule.action)
            return compile_conditions(rule.args, rule.action, resolve=resolve)

        self._rules = tuple(_CompiledRule(i, rule, compile_args) for i, rule in enumerate(profile.rules))
        self._plans: dict[str, _Plan] = {}

    def _plan(self, tool: str) -> _Plan:
        """What the lists and rules say about one tool name, worked out once per name."""
        plan = self._plans.get(tool)
        if plan is None:
            plan = _Plan(
                matches_any(tool, self._deny),
                tuple(rule for rule in self._rules if rule.names(tool)),
                matches_any(tool, self._ask),
                matches_any(tool, self._allow),
            )
            if len(self._plans) < _PLAN_CACHE_MAX:
                self._plans[tool] = plan
        return plan

    def visible(self, tool: str) -> bool:
        """Whether the client may see the tool: some list, rule or the default could let it run."""
        plan = self._plan(tool)
        return not plan.denied and (
            self._default != DENY or plan.allowed or plan.asked or any(rule.action != DENY for rule in plan.rules)
        )

    def decide(self, tool: str, arguments: Mapping[str, Any]) -> Verdict:
        plan = self._plan(tool)
        if plan.denied:
            return Verdict(DENY, "tools.deny", f"the profile denies the tool {tool}")
        missed: tuple[_CompiledRule, Mismatch] | None = None
        for rule in plan.rules:
            mismatch = rule.args.check(arguments)
            if mismatch is None:
                return Verdict(rule.action, rule.label, rule.reason or _rule_why(tool, rule))
            if missed is None and rule.action != DENY:
                missed = (rule, mismatch)
        if plan.asked:
            return Verdict(ASK, "tools.ask")
        if plan.allowed:
            return Verdict(ALLOW, "tools.allow")
        if missed is not None and self._default != ALLOW:
            rule, mismatch = missed
            why = f"the profile allows {tool} only with other arguments: {mismatch}"
            return Verdict(self._default, "tools.default", why)
        return Verdict(self._default, "tools.default", f"the profile does not allow the tool {tool}")


#: Distinct tool names whose plan is remembered; a server listing more is misbehaving.
_PLAN_CACHE_MAX: Final = 4096


@dataclass(frozen=True, slots=True)
class _Plan:
    denied: bool
    rules: tuple[_CompiledRule, ...]
    asked: bool
    allowed: bool


def _rule_why(tool: str, rule: _CompiledRule) -> str:
    if rule.action == DENY:
        return f"the profile's {rule.label} denies {tool} with these arguments"
    return f"{tool} with these arguments needs a person's approval ({rule.label})"


class NamedJudge:
    """Allow/ask/deny by name or URI glob, for resources and prompts: deny, ask, allow, default."""

    def __init__(self, section: NamedSection, what: str) -> None:
        self._section = section
        self._what = what

    def decide(self, name: str) -> Verdict:
        section = self._section
        if matches_any(name, section.deny):
            return Verdict(DENY, f"{self._what}.deny", f"the profile denies the {self._what[:-1]} {name}")
        if matches_any(name, section.ask):
            return Verdict(ASK, f"{self._what}.ask")
        if matches_any(name, section.allow):
            return Verdict(ALLOW, f"{self._what}.allow")
        why = f"the profile does not allow the {self._what[:-1]} {name}"
        return Verdict(section.default, f"{self._what}.default", why)

    def visible(self, name: str) -> bool:
        return self.decide(name).action != DENY
