"""Judging and reporting for scripts/bench: the budgets, the table, the verdicts and the JSON."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from bench_measure import REFUSALS, Counts, Result

# Budgets from the performance issue; each target but `direct` is judged against them.
BUDGET_ADDED_P50_US = 60.0
BUDGET_THROUGHPUT_RATIO = 0.8
BUDGET_LARGE_RATIO = 1.5
BUDGET_STARTUP_OVER_MS = 150.0
BUDGET_RSS_MB = 40.0
# Decimals a figure is rounded to in the JSON.
JSON_DIGITS = 3
# A table cell with no figure (a target that refuses nothing has no refused-call latency).
NO_FIGURE = "-"


@dataclass
class Check:
    """One budget applied to one figure."""

    name: str
    value: float
    limit: float
    unit: str
    at_most: bool

    @property
    def ok(self) -> bool:
        return self.value <= self.limit if self.at_most else self.value >= self.limit

    def describe(self) -> str:
        digits = {"x": 2, "MiB": 1}.get(self.unit, 0)
        budget = f"{'≤' if self.at_most else '≥'} {self.limit:g}"
        unit = self.unit if self.unit == "x" else f" {self.unit}"
        return f"{self.name} {self.value:,.{digits}f}{unit} ({budget}) {'ok' if self.ok else 'FAIL'}"


def checks(result: Result, direct: Result) -> list[Check]:
    return [
        Check("added p50", result.p50_us - direct.p50_us, BUDGET_ADDED_P50_US, "µs", True),
        Check("throughput", result.calls_per_s / direct.calls_per_s, BUDGET_THROUGHPUT_RATIO, "x", False),
        Check("10 MB echo", result.large_ms / direct.large_ms, BUDGET_LARGE_RATIO, "x", True),
        Check("startup over direct", result.startup_ms - direct.startup_ms, BUDGET_STARTUP_OVER_MS, "ms", True),
        Check("RSS under load", result.load_rss_mb, BUDGET_RSS_MB, "MiB", True),
    ]


def table_rows(result: Result, direct: Result | None) -> list[str]:
    def rel(text: str, extra: str) -> str:
        return f"{text} ({extra})" if direct is not None and result is not direct else text

    d = direct or result
    return [
        rel(f"{result.p50_us:,.0f}", f"{result.p50_us - d.p50_us:+,.0f}"),
        f"{result.p99_us:,.0f}",
        *(refused_cell(result, direct, kind) for kind in REFUSALS),
        rel(f"{result.calls_per_s:,.0f}", f"{result.calls_per_s / d.calls_per_s:.2f}x"),
        rel(f"{result.large_ms:,.0f}", f"{result.large_ms / d.large_ms:.2f}x"),
        rel(f"{result.startup_ms:,.0f}", f"{result.startup_ms - d.startup_ms:+,.0f}"),
        f"{result.load_rss_mb:.1f}",
        f"{result.peak_rss_mb:.1f}",
    ]


def refused_cell(result: Result, direct: Result | None, kind: str) -> str:
    """A refused call's p50, and its ratio to direct's echo p50 (a refusal never reaches a server)."""
    p50 = result.refused_p50_us.get(kind)
    if p50 is None:
        return NO_FIGURE
    return f"{p50:,.0f} ({p50 / direct.p50_us:.2f}x)" if direct is not None else f"{p50:,.0f}"


ROW_NAMES = [
    "latency p50 µs (added)",
    "latency p99 µs",
    "refused p50 µs, unknown tool (x direct p50)",
    "refused p50 µs, rule (x direct p50)",
    "throughput calls/s (x direct)",
    "10 MB echo ms (x direct)",
    "startup ms (over direct)",
    "RSS under load MiB",
    "peak RSS, 10 MB msgs MiB",
]


def print_report(results: dict[str, Result | str]) -> None:
    direct = results.get("direct")
    direct = direct if isinstance(direct, Result) else None
    columns = {
        name: table_rows(r, direct) if isinstance(r, Result) else ["error"] * len(ROW_NAMES)
        for name, r in results.items()
    }
    width = max(len(n) for n in ROW_NAMES)
    col = {name: max(len(name), *(len(c) for c in cells)) for name, cells in columns.items()}
    print("".ljust(width) + "".join(f"  {name:>{col[name]}}" for name in columns))
    for row, label in enumerate(ROW_NAMES):
        print(label.ljust(width) + "".join(f"  {cells[row]:>{col[name]}}" for name, cells in columns.items()))
    print()
    for name, result in results.items():
        print(verdict_line(name, result, direct))


def verdict_line(name: str, result: Result | str, direct: Result | None) -> str:
    if isinstance(result, str):
        return f"{name}: ERROR {result}"
    if name == "direct":
        return "direct: reference"
    if direct is None:
        return f"{name}: no verdict (direct failed)"
    found = checks(result, direct)
    verdict = "PASS" if all(c.ok for c in found) else "FAIL"
    return f"{name}: {verdict} — " + "; ".join(c.describe() for c in found)


def rounded(value: Any) -> Any:
    """Floats cut to JSON_DIGITS decimals, inside dicts too; anything else as it is."""
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    return round(value, JSON_DIGITS) if isinstance(value, float) else value


def json_report(results: dict[str, Result | str], counts: Counts) -> dict[str, Any]:
    direct = results.get("direct")
    out: dict[str, Any] = {"counts": asdict(counts), "cpus": os.cpu_count(), "targets": {}}
    for name, result in results.items():
        if isinstance(result, str):
            out["targets"][name] = {"error": result}
            continue
        entry: dict[str, Any] = {key: rounded(value) for key, value in asdict(result).items() if value != {}}
        if isinstance(direct, Result) and name != "direct":
            found = checks(result, direct)
            entry["verdict"] = {
                "pass": all(c.ok for c in found),
                "checks": [asdict(c) | {"value": round(c.value, JSON_DIGITS), "ok": c.ok} for c in found],
            }
        out["targets"][name] = entry
    return out
