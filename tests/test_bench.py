"""The benchmark stays runnable: a quick run measures every target (figures are not judged here)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_a_quick_bench_run_measures_every_target() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench"), "--quick", "--json"],
        capture_output=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr.decode()
    targets = json.loads(done.stdout)["targets"]
    assert set(targets) == {"direct", "naive", "mcpshield"}
    for name, figures in targets.items():
        assert "error" not in figures, (name, figures)
        assert figures["calls_per_s"] > 0
        assert figures["load_rss_mb"] > 0
    assert [c["name"] for c in targets["mcpshield"]["verdict"]["checks"]] == [
        "added p50",
        "throughput",
        "10 MB echo",
        "startup over direct",
        "RSS under load",
    ]
