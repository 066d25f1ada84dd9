"""Rate limits and the loop breaker: rolling one-minute windows over the tool calls let through.

The time comes from the caller (the message's Context), never from a clock read here.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Final

from mcpshield.policy.tools import matches_any
from mcpshield.profile.model import LimitsSection

#: The rolling window every `*_per_minute` limit counts over, in whole seconds.
WINDOW_S: Final = 60
#: Distinct (tool, arguments) pairs the loop breaker remembers; the oldest are forgotten first.
MAX_TRACKED_CALLS: Final = 10_000


class _Window:
    """Events of the last WINDOW_S seconds, counted per whole second: memory stays fixed (at
    most one bucket a second) however fast calls come."""

    __slots__ = ("_buckets", "_limit", "_total")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buckets: deque[list[int]] = deque()  # [second, count], oldest first
        self._total = 0

    def _expire(self, now: float) -> None:
        cutoff = math.floor(now) - int(WINDOW_S) + 1
        buckets = self._buckets
        while buckets and buckets[0][0] < cutoff:
            self._total -= buckets.popleft()[1]

    def retry_after(self, now: float) -> float | None:
        """None if one more event fits now; else the seconds until one does."""
        self._expire(now)
        if self._total < self._limit:
            return None
        return max(self._buckets[0][0] + WINDOW_S - now, 0.001)

    def add(self, now: float) -> None:
        second = math.floor(now)
        buckets = self._buckets
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += 1
        else:
            buckets.append([second, 1])
        self._total += 1

    def empty(self, now: float) -> bool:
        self._expire(now)
        return not self._buckets


class RateLimiter:
    """One profile's limits over one session."""

    def __init__(self, limits: LimitsSection) -> None:
        self._limits = limits
        self._overall = _Window(limits.calls_per_minute) if limits.calls_per_minute else None
        self._per_tool = {glob: _Window(n) for glob, n in limits.tools.items()}
        self._identical: dict[tuple[str, str], _Window] = {}

    @property
    def tracks_identical(self) -> bool:
        return self._limits.identical_calls_per_minute is not None

    def check(self, tool: str, args_key: Callable[[], str], now: float, in_flight: int) -> str | None:
        """Counts the call and returns None if it may go; else why not, with when to retry.
        `in_flight` is the number of other tool calls still awaiting an answer."""
        limits = self._limits
        if limits.max_concurrent is not None and in_flight >= limits.max_concurrent:
            return (
                f"{in_flight} tool calls are already running, the profile's limit is {limits.max_concurrent}; "
                "retry when one of them has finished"
            )
        windows: list[_Window] = []
        if self._overall is not None:
            windows.append(self._overall)
            wait = self._overall.retry_after(now)
            if wait is not None:
                return _over(f"more than {limits.calls_per_minute} tool calls in a minute", wait)
        for glob, window in self._per_tool.items():
            if matches_any(tool, (glob,)):
                windows.append(window)
                wait = window.retry_after(now)
                if wait is not None:
                    return _over(f"more than {limits.tools[glob]} calls of {glob} in a minute", wait)
        if limits.identical_calls_per_minute is not None:
            window = self._identical_window(tool, args_key(), now)
            windows.append(window)
            wait = window.retry_after(now)
            if wait is not None:
                return _over(
                    f"the same call of {tool} with the same arguments came "
                    f"{limits.identical_calls_per_minute} times in a minute, which looks like a loop; "
                    "change the arguments or the approach",
                    wait,
                )
        for window in windows:
            window.add(now)
        return None

    def _identical_window(self, tool: str, key: str, now: float) -> _Window:
        window = self._identical.get((tool, key))
        if window is None:
            if len(self._identical) >= MAX_TRACKED_CALLS:
                self._forget(now)
            assert self._limits.identical_calls_per_minute is not None
            window = self._identical[(tool, key)] = _Window(self._limits.identical_calls_per_minute)
        return window

    def _forget(self, now: float) -> None:
        """Drops windows with nothing left in them, then the oldest half if still full."""
        for key in [key for key, window in self._identical.items() if window.empty(now)]:
            del self._identical[key]
        if len(self._identical) >= MAX_TRACKED_CALLS:
            for key in list(self._identical)[: MAX_TRACKED_CALLS // 2]:
                del self._identical[key]


def _over(what: str, wait: float) -> str:
    return f"mcpshield's rate limit: {what}; retry in {math.ceil(wait)} s"
