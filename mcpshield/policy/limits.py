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

#: The rolling window every `*_per_minute` limit counts over.
WINDOW_S: Final = 60.0
#: Distinct (tool, arguments) pairs the loop breaker remembers; the oldest are forgotten first.
MAX_TRACKED_CALLS: Final = 10_000


class _Window:
    """Times of the events in the last WINDOW_S seconds."""

    __slots__ = ("_limit", "_times")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._times: deque[float] = deque()

    def retry_after(self, now: float) -> float | None:
        """None if one more event fits now; else the seconds until one does."""
        times = self._times
        while times and times[0] <= now - WINDOW_S:
            times.popleft()
        if len(times) < self._limit:
            return None
        return max(times[0] + WINDOW_S - now, 0.001)

    def add(self, now: float) -> None:
        self._times.append(now)

    def empty(self, now: float) -> bool:
        return self.retry_after(now) is None and not self._times


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
