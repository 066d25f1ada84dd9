"""The measurements of scripts/bench: each target's process, driven in interleaved rounds, and the
figures gathered from it (`scripts/bench --help` says what each one is).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench_client import (
    CALL_TIMEOUT_S,
    REFUSED_TEXT,
    UNKNOWN_TOOL,
    BenchError,
    Conn,
    RssSampler,
    call_request,
    check_echo,
    check_tool_refused,
    check_unknown_tool,
    echo_request,
    initialize,
    list_tools,
    running,
)

REPO = Path(__file__).resolve().parent.parent
ECHO_SERVER = REPO / "scripts" / "bench_echo_server.py"
NAIVE_RELAY = REPO / "scripts" / "naive_relay.py"
BENCH_PROFILE = REPO / "scripts" / "bench_profile.toml"
# The bench profile plus a secret in the server's environment, which mcpshield redacts.
SECRET_PROFILE = REPO / "scripts" / "bench_secret_profile.toml"
SANDBOX_PROFILE = REPO / "scripts" / "bench_sandbox_profile.toml"

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
    # Per kind of refused call (REFUSALS); only targets in REFUSING make them.
    refused_warmup: int = 100
    refused_calls: int = 2000
    throughput_warmup: int = 2000
    throughput_calls: int = 100_000
    large_repeats: int = 3
    startup_runs: int = 9
    # Latency (with the refused calls) and throughput are split into this many interleaved blocks.
    rounds: int = 10


QUICK = Counts(
    latency_warmup=50,
    latency_calls=300,
    refused_warmup=10,
    refused_calls=100,
    throughput_warmup=200,
    throughput_calls=3000,
    large_repeats=1,
    startup_runs=2,
    rounds=2,
)


def target_commands() -> dict[str, list[str]]:
    python = sys.executable
    server = [python, str(ECHO_SERVER)]
    shield = [python, "-m", "mcpshield", "run", "--profile"]
    return {
        "direct": server,
        "naive": [python, str(NAIVE_RELAY), "--", *server],
        "mcpshield": [*shield, "none", "--", *server],
        "no-audit": [*shield, "none", "--no-audit", "--", *server],
        "profile": [*shield, str(BENCH_PROFILE.relative_to(REPO)), "--", *server],
        "secret": [*shield, str(SECRET_PROFILE.relative_to(REPO)), "--", *server],
        "sandbox": [*shield, str(SANDBOX_PROFILE.relative_to(REPO)), "--", *server],
    }


@dataclass(frozen=True)
class Refusal:
    """A tools/call the bench profile refuses, and the check that its answer says so."""

    request: Callable[[int], bytes]
    check: Callable[[bytes, int], None]


# Keyed by the name the table and the JSON use.
REFUSALS = {
    "unknown_tool": Refusal(lambda i: call_request(i, UNKNOWN_TOOL, {"command": "true"}), check_unknown_tool),
    "rule": Refusal(lambda i: echo_request(i, REFUSED_TEXT), check_tool_refused),
}
# Targets enforcing scripts/bench_profile.toml: the only ones that refuse the REFUSALS calls.
REFUSING = frozenset({"profile", "secret", "sandbox"})
# Targets with a secret to redact, checked to redact it before anything is measured.
REDACTING = frozenset({"secret"})


def bench_secret() -> str:
    """The one value in scripts/bench_secret_profile.toml's [env]."""
    with SECRET_PROFILE.open("rb") as file:
        (value,) = tomllib.load(file)["env"].values()
    return str(value)


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
    refused_us: dict[str, list[float]] = field(default_factory=dict)
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


def round_trip(conn: Conn, payload: bytes) -> tuple[bytes, float]:
    """Sends one request line and reads one answer line: the answer, and the µs in between."""
    start = time.perf_counter_ns()
    conn.queue(payload)
    line = conn.read_line(time.monotonic() + CALL_TIMEOUT_S)
    return line, (time.perf_counter_ns() - start) / 1000


def latency_block(trial: Trial, calls: int, keep: bool) -> None:
    """Sequential small echo round trips; keeps their durations in µs unless it is a warm-up."""
    conn = trial.live
    conn.on_tick = None  # sampling RSS here would show up in the tail latency
    first = trial.ids(calls)
    for request_id in range(first, first + calls):
        line, elapsed_us = round_trip(conn, echo_request(request_id) + b"\n")
        check_echo(line, request_id)
        if keep:
            trial.latency_us.append(elapsed_us)


def refused_block(trial: Trial, calls: int, keep: bool) -> None:
    """`calls` sequential round trips of each kind of refused call, taking turns; keeps their
    durations in µs, by kind, unless it is a warm-up."""
    conn = trial.live
    conn.on_tick = None
    request_id = trial.ids(calls * len(REFUSALS))
    for _ in range(calls):
        for kind, refusal in REFUSALS.items():
            line, elapsed_us = round_trip(conn, refusal.request(request_id) + b"\n")
            refusal.check(line, request_id)
            if keep:
                trial.refused_us.setdefault(kind, []).append(elapsed_us)
            request_id += 1


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
        if b'"error"' in chunk or b'"isError"' in chunk:
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
    reply = check_echo(line, request_id)
    if len(reply["result"]["content"][0]["text"]) != len(text):
        raise BenchError("the 10 MB echo came back with a different length")


def open_session(trial: Trial, stack: ExitStack) -> None:
    """Starts the target for the session phases: initialize, then tools/list as clients do."""
    trial.conn = stack.enter_context(running(trial.command, REPO))
    initialize(trial.conn)
    list_tools(trial.conn)
    trial.sampler = RssSampler(trial.conn.proc.pid)


def check_redacting(trial: Trial) -> None:
    """Echoes the target's secret once: it must come back redacted, or the target would measure
    nothing of what it is named for."""
    secret = bench_secret()
    request_id = trial.ids(1)
    line, _ = round_trip(trial.live, echo_request(request_id, secret) + b"\n")
    text = check_echo(line, request_id)["result"]["content"][0]["text"]
    if secret in text or "[REDACTED:" not in text:
        raise BenchError(
            "the server's secret came back unredacted: `mcpshield run` must inject the profile's [env]"
            " and redact it (RunConfig's redactor)"
        )


def sample_rss(trial: Trial) -> None:
    assert trial.sampler is not None
    trial.live.on_tick = trial.sampler.sample
    trial.sampler.sample()


def note_load_rss(trial: Trial) -> None:
    """Keeps the peak seen so far: the pipelined load, before any 10 MB message."""
    assert trial.sampler is not None
    trial.load_rss = trial.sampler.peak


def latency_rounds(trials: list[Trial], counts: Counts) -> None:
    """The echo round trips of every target, each round followed by the refused calls."""
    refusing = [t for t in trials if t.name in REFUSING]
    each_live(trials, lambda t: latency_block(t, counts.latency_warmup, keep=False))
    each_live(refusing, lambda t: refused_block(t, counts.refused_warmup, keep=False))
    for _ in range(counts.rounds):
        each_live(trials, lambda t: latency_block(t, counts.latency_calls // counts.rounds, keep=True))
        each_live(refusing, lambda t: refused_block(t, counts.refused_calls // counts.rounds, keep=True))


def run_trials(trials: list[Trial], counts: Counts) -> None:
    for _ in range(counts.startup_runs):
        each_live(trials, startup_once)
    with ExitStack() as stack:
        each_live(trials, lambda t: open_session(t, stack))
        each_live([t for t in trials if t.name in REDACTING], check_redacting)
        latency_rounds(trials, counts)
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
    # By kind of refused call (REFUSALS); empty for targets that refuse nothing.
    refused_p50_us: dict[str, float] = field(default_factory=dict)
    # How many refused calls were timed, each answered as its kind must be.
    refused_calls: dict[str, int] = field(default_factory=dict)


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
        refused_p50_us={kind: statistics.median(times) for kind, times in trial.refused_us.items()},
        refused_calls={kind: len(times) for kind, times in trial.refused_us.items()},
    )


def measure(names: list[str], counts: Counts) -> dict[str, Result | str]:
    """Each target's Result, or the error that stopped it."""
    commands = target_commands()
    trials = [Trial(name, commands[name]) for name in names]
    run_trials(trials, counts)
    return {t.name: t.error if t.error is not None else summarise(t) for t in trials}
