"""scripts/bench: measure what mcpshield adds to a stdio MCP server, against the server alone and a
naive relay. `scripts/bench --help` says what is measured and the budgets each target is judged by.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from bench_client import RSS_SAMPLE_INTERVAL_S, UNKNOWN_TOOL
from bench_measure import IN_FLIGHT, LARGE_TEXT_BYTES, QUICK, Counts, measure, target_commands
from bench_report import (
    BUDGET_ADDED_P50_US,
    BUDGET_LARGE_RATIO,
    BUDGET_RSS_MB,
    BUDGET_STARTUP_OVER_MS,
    BUDGET_THROUGHPUT_RATIO,
    json_report,
    print_report,
)

# -- command line --------------------------------------------------------------------------------

DESCRIPTION = """\
Measure what a wrapper adds to a stdio MCP server: mcpshield (without and with a profile) and a
naive asyncio relay, each against the bare echo server, driven by a raw JSON-RPC client over pipes
(not the SDK: too slow).
"""

_D = Counts()
HELP = f"""\
targets:
  direct     python scripts/bench_echo_server.py            (the reference; always measured)
  naive      python scripts/naive_relay.py -- <direct>      (readline, json, drain per message)
  mcpshield  python -m mcpshield run --profile none -- <direct>          (pass-through: no profile;
             every request recorded in the audit log, written under a temporary MCPSHIELD_LOG_DIR)
  no-audit   python -m mcpshield run --profile none --no-audit -- <direct>
             (pass-through without the audit log: compare with mcpshield to see what logging costs)
  profile    python -m mcpshield run --profile scripts/bench_profile.toml -- <direct>
             (every tool denied but echo, which a [[rules]] entry allows on a condition on its
             argument; arguments checked against the tool's inputSchema; limits out of reach)
  secret     python -m mcpshield run --profile scripts/bench_secret_profile.toml -- <direct>
             (profile, plus a 32-character secret in the server's environment: everything the
             server sends back is searched for it, and never holds it; compare with profile to
             see what redaction costs when nothing matches. Its echo is checked to be redacted
             once before anything is measured)
  sandbox    python -m mcpshield run --profile scripts/bench_sandbox_profile.toml -- <direct>
             (profile, with the server in the OS sandbox `auto` picks here, no network: compare
             with profile to see what the sandbox costs, at start-up above all)

measurements (each session: initialize + notifications/initialized, then tools/list):
  latency     {_D.latency_calls:,} sequential small tools/call echo round trips after {_D.latency_warmup}
              warm-up calls: p50 and p99 in µs, and the p50 added over direct
  refused     profile, secret and sandbox only, after each latency block: {_D.refused_calls:,} sequential round trips of
              each call the profile refuses, taking turns, after {_D.refused_warmup} warm-up calls each: a tool
              it does not allow ("{UNKNOWN_TOOL}": a -32602 "Unknown tool" error) and an echo its deny rule
              refuses (a result with isError); every answer is checked. p50 in µs and its ratio to
              direct's echo p50: a refused call never reaches the server, so it should beat direct.
              Shown, not judged.
  throughput  {_D.throughput_calls:,} echo calls kept {IN_FLIGHT} in flight, topped up with one
              write per read: calls/s and the ratio to direct
  10 MB echo  an echo whose argument and answer each hold {LARGE_TEXT_BYTES:,} bytes of text:
              ms, median of {_D.large_repeats}, and the ratio to direct
  startup     spawn -> complete initialize response: ms, median of {_D.startup_runs} fresh processes,
              and the ms over direct; for profile, loading and compiling the profile included
  RSS         of the process the bench started (for the wrappers the wrapper itself, not the
              server under it), sampled every {RSS_SAMPLE_INTERVAL_S * 1000:g} ms: its peak under
              the pipelined load (judged), and its peak once 10 MB messages passed (shown)

  Targets take turns ({_D.rounds} interleaved blocks for latency and throughput, one repeat at a
  time for startup and 10 MB), so other load on the machine hits them all alike. --quick cuts
  every count down for a smoke run of a few seconds; its figures are rough.

verdict, per target but direct (budgets from the performance issue):
  added p50 <= {BUDGET_ADDED_P50_US:g} µs        throughput >= {BUDGET_THROUGHPUT_RATIO}x direct
  10 MB echo <= {BUDGET_LARGE_RATIO}x direct     startup <= {BUDGET_STARTUP_OVER_MS:g} ms over direct
  RSS under load <= {BUDGET_RSS_MB:g} MiB

Every wait is bounded and every started process is killed at the end. A target that hangs, dies
or answers wrongly (an echo refused included) is reported as ERROR (with the tail of its stderr)
and the others still run.
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
        default=",".join(target_commands()),
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
    # The audited targets write one log file per session: never into the user's own log.
    with tempfile.TemporaryDirectory(prefix="mcpshield-bench-logs-") as logs:
        os.environ["MCPSHIELD_LOG_DIR"] = logs
        results = measure(args.targets, counts)
    if args.json:
        print(json.dumps(json_report(results, counts), indent=2, ensure_ascii=False))
    else:
        print_report(results)
    return 1 if any(isinstance(r, str) for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
