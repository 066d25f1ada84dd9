"""scripts/bench: measure what mcpshield adds to a stdio MCP server, against the server alone and a
naive relay. `scripts/bench --help` says what is measured and the budgets each target is judged by.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench_client import (
    CALL_TIMEOUT_S,
    RSS_SAMPLE_INTERVAL_S,
    BenchError,
    Conn,
    RssSampler,
    check_response,
    echo_request,
    initialize,
    running,
)

REPO = Path(__file__).resolve().parent.parent
ECHO_SERVER = REPO / "scripts" / "bench_echo_server.py"
NAIVE_RELAY = REPO / "scripts" / "naive_relay.py"

# Budgets from the performance issue; each target but `direct` is judged against them.
BUDGET_ADDED_P50_US = 60.0
BUDGET_THROUGHPUT_RATIO = 0.8
BUDGET_LARGE_RATIO = 1.5
BUDGET_STARTUP_OVER_MS = 150.0
BUDGET_RSS_MB = 40.0

# A 10 MB message through a slow relay (naive json round trip) takes well under this.
LARGE_TIMEOUT_S = 30.0
# One pipelined block; the naive relay needs ~0.2 s for one default block (10,000 calls).
THROUGHPUT_TIMEOUT_S = 30.0
# Below 10 MiB including the envelope: the TypeScript SDK drops messages above that.
LARGE_TEXT_BYTES = 10_000_000
IN_FLIGHT = 128
MIB = 1024 * 1024


@dataclass(frozen=True)
class Counts:
    """How much work each phase does; --quick shrinks it to a smoke run."""

    latency_warmup: int = 500
    latency_calls: int = 10_000
    throughput_warmup: int = 2000
    throughput_calls: int = 100_000
    large_repeats: int = 3
    startup_runs: int = 9
    # Latency and throughput are split into this many interleaved blocks per target.
    rounds: int = 10


QUICK = Counts(
    latency_warmup=50,
    latency_calls=300,
    throughput_warmup=200,
    throughput_calls=3000,
    large_repeats=1,
    startup_runs=2,
    rounds=2,
)


def target_commands() -> dict[str, list[str]]:
    python = sys.executable
    server = [python, str(ECHO_SERVER)]
    return {
        "direct": server,
        "naive": [python, str(NAIVE_RELAY), "--", *server],
        "mcpshield": [python, "-m", "mcpshield", "run", "--profile", "none", "--", *server],
    }


# -- the measurements --------------------------------------------------------------------------
# Targets are measured in interleaved rounds (direct, naive, mcpshield, direct, ...), so load from
# elsewhere on the machine spreads over all of them instead of skewing whichever ran during it.


@dataclass
class Trial:
    """One target's process, the figures gathered so far, and the first error it hit."""

    name: str
    command: list[str]
    conn: Conn | None = None
    sampler: RssSampler | None = None
    error: str | None = None
    next_id: int = 1
    startup_ms: list[float] = field(default_factory=list)
    latency_us: list[float] = field(default_factory=list)
    throughput_calls: int = 0
    throughput_s: float = 0.0
    large_ms: list[float] = field(default_factory=list)
    load_rss: int = 0

    def ids(self, count: int) -> int:
        """Reserve `count` fresh request ids and return the first."""
        first = self.next_id
        self.next_id += count
        return first

    @property
    def live(self) -> Conn:
        assert self.conn is not None
        return self.conn


def each_live(trials: list[Trial], action: Callable[[Trial], None]) -> None:
    """Run `action` on every trial without an error yet; a failure retires only that trial."""
    for trial in trials:
        if trial.error is None:
            try:
                action(trial)
            except (BenchError, OSError, subprocess.TimeoutExpired) as exc:
                trial.error = str(exc) or type(exc).__name__


def startup_once(trial: Trial) -> None:
    """Spawn -> complete initialize response, in ms."""
    start = time.perf_counter()
    with running(trial.command, REPO) as conn:
        initialize(conn)
        trial.startup_ms.append((time.perf_counter() - start) * 1000)


def latency_block(trial: Trial, calls: int, keep: bool) -> None:
    """Sequential small echo round trips; keeps their durations in µs unless it is a warm-up."""
    conn = trial.live
    conn.on_tick = None  # sampling RSS here would show up in the tail latency
    first = trial.ids(calls)
    for request_id in range(first, first + calls):
        payload = echo_request(request_id) + b"\n"
        start = time.perf_counter_ns()
        conn.queue(payload)
        line = conn.read_line(time.monotonic() + CALL_TIMEOUT_S)
        elapsed = time.perf_counter_ns() - start
        check_response(line, request_id)
        if keep:
            trial.latency_us.append(elapsed / 1000)


def throughput_block(trial: Trial, calls: int, keep: bool) -> None:
    """`calls` echo calls keeping IN_FLIGHT outstanding; adds them and their time unless a warm-up."""
    conn = trial.live
    if conn.buffered_input():
        raise BenchError("unexpected output left over before the throughput run")
    first = trial.ids(calls)
    requests = [echo_request(first + i) + b"\n" for i in range(calls)]
    deadline = time.monotonic() + THROUGHPUT_TIMEOUT_S
    sent = received = 0
    start = time.perf_counter()
    while received < calls:
        top_up = min(IN_FLIGHT - (sent - received), calls - sent)
        if top_up > 0:
            # One write for the whole top-up, as a real client batching its sends would.
            conn.queue(b"".join(requests[sent : sent + top_up]))
            sent += top_up
        chunk = conn.pump(deadline)
        if b'"error"' in chunk:
            raise BenchError(f"an echo call failed during the throughput run: {chunk[:200]!r}")
        received += chunk.count(b"\n")
    if keep:
        trial.throughput_s += time.perf_counter() - start
        trial.throughput_calls += calls


def large_once(trial: Trial, text: str) -> None:
    """One echo whose argument and answer are `text`, in ms."""
    request_id = trial.ids(1)
    payload = echo_request(request_id, text) + b"\n"
    start = time.perf_counter()
    trial.live.queue(payload)
    line = trial.live.read_line(time.monotonic() + LARGE_TIMEOUT_S)
    trial.large_ms.append((time.perf_counter() - start) * 1000)
    reply = check_response(line, request_id)
    if len(reply["result"]["content"][0]["text"]) != len(text):
        raise BenchError("the 10 MB echo came back with a different length")


def open_session(trial: Trial, stack: ExitStack) -> None:
    trial.conn = stack.enter_context(running(trial.command, REPO))
    initialize(trial.conn)
    trial.sampler = RssSampler(trial.conn.proc.pid)


def sample_rss(trial: Trial) -> None:
    assert trial.sampler is not None
    trial.live.on_tick = trial.sampler.sample
    trial.sampler.sample()


def note_load_rss(trial: Trial) -> None:
    """Keeps the peak seen so far: the pipelined load, before any 10 MB message."""
    assert trial.sampler is not None
    trial.load_rss = trial.sampler.peak


def run_trials(trials: list[Trial], counts: Counts) -> None:
    for _ in range(counts.startup_runs):
        each_live(trials, startup_once)
    with ExitStack() as stack:
        each_live(trials, lambda t: open_session(t, stack))
        each_live(trials, lambda t: latency_block(t, counts.latency_warmup, keep=False))
        for _ in range(counts.rounds):
            each_live(trials, lambda t: latency_block(t, counts.latency_calls // counts.rounds, keep=True))
        each_live(trials, sample_rss)
        each_live(trials, lambda t: throughput_block(t, counts.throughput_warmup, keep=False))
        for _ in range(counts.rounds):
            each_live(trials, lambda t: throughput_block(t, counts.throughput_calls // counts.rounds, keep=True))
        each_live(trials, note_load_rss)
        text = "x" * LARGE_TEXT_BYTES
        for _ in range(counts.large_repeats):
            each_live(trials, lambda t: large_once(t, text))
        each_live(trials, sample_rss)


@dataclass
class Result:
    """One target's figures; durations in the unit their name says."""

    p50_us: float
    p99_us: float
    calls_per_s: float
    large_ms: float
    startup_ms: float
    load_rss_mb: float
    peak_rss_mb: float


def summarise(trial: Trial) -> Result:
    assert trial.sampler is not None
    p99 = statistics.quantiles(trial.latency_us, n=100, method="inclusive")[98]
    return Result(
        p50_us=statistics.median(trial.latency_us),
        p99_us=p99,
        calls_per_s=trial.throughput_calls / trial.throughput_s,
        large_ms=statistics.median(trial.large_ms),
        startup_ms=statistics.median(trial.startup_ms),
        load_rss_mb=trial.load_rss / MIB,
        peak_rss_mb=trial.sampler.peak / MIB,
    )


def measure(names: list[str], counts: Counts) -> dict[str, Result | str]:
    """Each target's Result, or the error that stopped it."""
    commands = target_commands()
    trials = [Trial(name, commands[name]) for name in names]
    run_trials(trials, counts)
    return {t.name: t.error if t.error is not None else summarise(t) for t in trials}


# -- judging and reporting -----------------------------------------------------------------------


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
        rel(f"{result.calls_per_s:,.0f}", f"{result.calls_per_s / d.calls_per_s:.2f}x"),
        rel(f"{result.large_ms:,.0f}", f"{result.large_ms / d.large_ms:.2f}x"),
        rel(f"{result.startup_ms:,.0f}", f"{result.startup_ms - d.startup_ms:+,.0f}"),
        f"{result.load_rss_mb:.1f}",
        f"{result.peak_rss_mb:.1f}",
    ]


ROW_NAMES = [
    "latency p50 µs (added)",
    "latency p99 µs",
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


def json_report(results: dict[str, Result | str], counts: Counts) -> dict[str, Any]:
    direct = results.get("direct")
    out: dict[str, Any] = {"counts": asdict(counts), "cpus": os.cpu_count(), "targets": {}}
    for name, result in results.items():
        if isinstance(result, str):
            out["targets"][name] = {"error": result}
            continue
        entry: dict[str, Any] = {key: round(value, 3) for key, value in asdict(result).items()}
        if isinstance(direct, Result) and name != "direct":
            found = checks(result, direct)
            entry["verdict"] = {
                "pass": all(c.ok for c in found),
                "checks": [asdict(c) | {"value": round(c.value, 3), "ok": c.ok} for c in found],
            }
        out["targets"][name] = entry
    return out


# -- command line --------------------------------------------------------------------------------

DESCRIPTION = """\
Measure what a wrapper adds to a stdio MCP server: mcpshield and a naive asyncio relay, each
against the bare echo server, driven by a raw JSON-RPC client over pipes (not the SDK: too slow).
"""

_D = Counts()
HELP = f"""\
targets:
  direct     python scripts/bench_echo_server.py            (the reference; always measured)
  naive      python scripts/naive_relay.py -- <direct>      (readline, json, drain per message)
  mcpshield  python -m mcpshield run -- <direct>

measurements (each target initialized first: initialize + notifications/initialized):
  latency     {_D.latency_calls:,} sequential small tools/call echo round trips after {_D.latency_warmup}
              warm-up calls: p50 and p99 in µs, and the p50 added over direct
  throughput  {_D.throughput_calls:,} echo calls kept {IN_FLIGHT} in flight, topped up with one
              write per read: calls/s and the ratio to direct
  10 MB echo  an echo whose argument and answer each hold {LARGE_TEXT_BYTES:,} bytes of text:
              ms, median of {_D.large_repeats}, and the ratio to direct
  startup     spawn -> complete initialize response: ms, median of {_D.startup_runs} fresh processes,
              and the ms over direct
  RSS         of the process the bench started (for mcpshield and naive the wrapper itself, not
              the server under it), sampled every {RSS_SAMPLE_INTERVAL_S * 1000:g} ms: its peak
              under the pipelined load (judged), and its peak once 10 MB messages passed (shown)

  Targets take turns ({_D.rounds} interleaved blocks for latency and throughput, one repeat at a
  time for startup and 10 MB), so other load on the machine hits them all alike. --quick cuts
  every count down for a smoke run of a few seconds; its figures are rough.

verdict, per target but direct (budgets from the performance issue):
  added p50 <= {BUDGET_ADDED_P50_US:g} µs        throughput >= {BUDGET_THROUGHPUT_RATIO}x direct
  10 MB echo <= {BUDGET_LARGE_RATIO}x direct     startup <= {BUDGET_STARTUP_OVER_MS:g} ms over direct
  RSS under load <= {BUDGET_RSS_MB:g} MiB

Every wait is bounded and every started process is killed at the end. A target that hangs, dies
or answers wrongly is reported as ERROR (with the tail of its stderr) and the others still run.
Exit status: 0 if every target was measured, 1 if any errored, 2 on bad arguments.
Run it on an otherwise idle machine: the client, the wrapper and the server share the CPUs.
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description=DESCRIPTION,
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--targets",
        default="direct,naive,mcpshield",
        help="comma-separated targets to run (default: %(default)s); direct is always added",
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts: a smoke run in seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    args = parser.parse_args(argv)
    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(names) - set(target_commands()))
    if unknown:
        parser.error(f"unknown targets: {', '.join(unknown)} (choose from {', '.join(target_commands())})")
    args.targets = ["direct", *[n for n in dict.fromkeys(names) if n != "direct"]]
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    counts = QUICK if args.quick else Counts()
    if not args.json:
        print(f"measuring {', '.join(args.targets)} in interleaved rounds ...", file=sys.stderr, flush=True)
    results = measure(args.targets, counts)
    if args.json:
        print(json.dumps(json_report(results, counts), indent=2, ensure_ascii=False))
    else:
        print_report(results)
    return 1 if any(isinstance(r, str) for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
