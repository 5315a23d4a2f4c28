"""Smoke test of benchmarks/live_latency.py (figures not checked: speed lives in benchmarks)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import live_latency  # noqa: E402


def test_live_latency_smoke(tmp_path, capsys):
    out = tmp_path / "live.json"
    assert live_latency.main(["--positions", "2", "5", "--prefix-positions", "2", "--repeats", "2", "--threads", "1",
                              "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    for name in live_latency.SETTINGS:
        rows = results["settings"][name]["rows"]
        assert [r["position"] for r in rows] == [2, 5] and all(r["p50_ms"] > 0 and r["session_bytes"] > 0 for r in rows)
        assert results["settings"][name]["prefix"][0]["prefix_ms"] > 0
    text = capsys.readouterr().out
    assert "| position | add p50 (ms)" in text and "p50 at position 5 / at 2" in text
