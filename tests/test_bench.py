"""The benchmark stays runnable: a quick run measures every target (figures are not judged here)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from conftest import ROOT

#: Bound on the whole quick run; it takes a few seconds on an idle machine.
QUICK_RUN_TIMEOUT_S = 120
TARGETS = {"direct", "naive", "mcpshield", "no-audit", "profile", "secret", "sandbox"}
# Targets whose profile refuses calls (the secret and sandbox profiles extend the bench profile).
REFUSING = {"profile", "secret", "sandbox"}
REFUSED_KINDS = {"unknown_tool", "rule"}


def quick_bench() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench"), "--quick", "--json"],
        capture_output=True,
        timeout=QUICK_RUN_TIMEOUT_S,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr.decode()
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_a_quick_bench_run_measures_every_target_and_the_refused_calls() -> None:
    report = quick_bench()
    targets = report["targets"]
    assert set(targets) == TARGETS
    for name, figures in targets.items():
        assert "error" not in figures, (name, figures)
        assert figures["p50_us"] > 0
        assert figures["calls_per_s"] > 0
        assert figures["startup_ms"] > 0
        assert figures["load_rss_mb"] > 0
    for name in TARGETS - {"direct"}:
        assert [c["name"] for c in targets[name]["verdict"]["checks"]] == [
            "added p50",
            "throughput",
            "10 MB echo",
            "startup over direct",
            "RSS under load",
        ]
    # Only the profiles refuse calls; the bench checked every answer (an Unknown tool error, an
    # isError result) and counts the ones it timed.
    for name in REFUSING:
        refusing = targets[name]
        assert set(refusing["refused_p50_us"]) == REFUSED_KINDS
        assert all(p50 > 0 for p50 in refusing["refused_p50_us"].values())
        assert refusing["refused_calls"] == dict.fromkeys(REFUSED_KINDS, report["counts"]["refused_calls"])
    for name in TARGETS - REFUSING:
        assert "refused_p50_us" not in targets[name]
