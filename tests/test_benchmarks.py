"""The benchmark suite's quick mode runs end to end and writes its report (no timing assertions)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_common  # noqa: E402
import suite  # noqa: E402


@pytest.mark.integration
def test_quick_suite_writes_every_section(tmp_path, monkeypatch):
    assert torch.get_num_threads() == 1  # conftest's autouse fixture
    monkeypatch.chdir(ROOT)
    results = suite.run_all(quick=True, device="cpu")
    text = suite.render(results, command="python benchmarks/suite.py --quick")
    out = tmp_path / "BENCHMARKS.md"
    out.write_text(text)
    for heading in ("## Goals", "### MELD settings", "### IEMOCAP settings", "## One dialogue of N utterances",
                    "## Inference latency and batch prediction", "## Where the time goes"):
        assert heading in text
    assert "Quick mode" in text
    # every goal row carries a verdict, and each measurement is a real number
    goal_rows = [line for line in text.split("## Goals")[1].split("##")[0].splitlines() if line.startswith("| ")]
    assert len(goal_rows) >= 8 and all(("met" in row or "n/a" in row) for row in goal_rows[2:])
    assert results["train_iemocap"]["train_utt_per_s"] > 0
    assert results["train_iemocap_lean"]["train_utt_per_s"] > 0
    assert len(results["train_iemocap"]["epochs"]) == 2
    assert [r["length"] for r in results["scaling"]["rows"]] == [8, 16, 32]
    assert results["latency"]["no_grad"]["median_ms"] > 0
    assert results["batch"]["utterances"] == 20
    profile = results["profile"]
    for label in ("redifu.encoders", "redifu.denoiser", "redifu.graph", "redifu.fusion", "redifu.loss",
                  "redifu.data"):
        assert label in profile["labels"]
    assert {"fusion", "graph", "denoiser"} <= set(profile["backward"])
    assert results["latency"]["no_grad_bf16"]["max_probability_difference"] < 0.05
    assert "weights in bfloat16" in text

    # Saved results render again, and a second run's results become the GPU column and section.
    saved = tmp_path / "results.json"
    suite.save_json(saved, results)
    assert suite.main(["--from-json", str(saved), "--gpu-results", str(saved), "--write", str(out)]) == 0
    rendered = out.read_text()
    assert "## On a GPU: cpu" in rendered
    header = rendered.split("## Goals")[1].splitlines()[2]
    assert header.endswith("| redifu on cpu |")
    assert not (tmp_path / "results.json.partial").exists()


@pytest.mark.integration
def test_stages_run_in_a_fresh_process_with_this_ones_threads():
    import os

    assert suite.in_fresh_process(os.getpid) != os.getpid()
    assert suite.in_fresh_process(torch.get_num_threads) == torch.get_num_threads()


def test_first_utterances_cuts_to_the_count():
    import latency
    from redifu.data.synthetic import make_synthetic_corpus

    dialogues = make_synthetic_corpus("meld", seed=0, train_dialogues=1, dev_dialogues=1,
                                      test_dialogues=20).splits["test"]
    chosen = latency.first_utterances(dialogues, 50)
    assert sum(len(d) for d in chosen) == 50
    assert all(len(d.labels) == len(d) and all(len(x) == len(d) for x in d.features.values()) for d in chosen)


def test_memory_probes_read_this_process():
    assert bench_common.rss_mb() > 0
    bench_common.reset_peak_rss()
    assert bench_common.peak_rss_mb() >= bench_common.rss_mb() * 0.5
    assert bench_common.table(["a", "b"], [[1, 2.5]]).splitlines()[2] == "| 1 | 2.50 |"


@pytest.mark.integration
def test_serve_load_runs_both_settings_without_errors(tmp_path):
    pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'redifu[serve]'")
    pytest.importorskip("httpx", reason="needs httpx: pip install 'redifu[test]'")
    import argparse

    import serve_load

    checkpoint = serve_load.build_checkpoint(tmp_path / "ckpt")
    args = argparse.Namespace(checkpoint=str(checkpoint), url=None, server_pid=None, clients=3, seconds=1.0,
                              warmup=0.2, sizes=[2, 6], batching=["1:0", "4:5"], transcripts=False, threads=1,
                              timeout=60.0, json=None, rounds=1)
    result = serve_load.run(args)
    assert [(r["batching"], r["utterances"]) for r in result["rows"]] == [
        ("off (max-batch 1)", 2), ("off (max-batch 1)", 6), ("max-batch 4, wait 5 ms", 2), ("max-batch 4, wait 5 ms", 6)]
    assert all(r["errors"] == 0 and r["requests"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in result["rows"])
    assert all(s["rss_start_mb"] > 50 and s["rss_end_mb"] > 50 for s in result["servers"])
    assert all(r["rss_mb"] > 50 for r in result["rows"])
    text = serve_load.render(result)
    assert "| batching | utterances / request |" in text and "ERRORS" not in text and "cores" in text


@pytest.mark.integration
def test_live_ws_runs_concurrent_sessions_without_errors():
    pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'redifu[serve]'")
    pytest.importorskip("websockets", reason="needs websockets: pip install 'redifu[serve]'")
    import argparse

    import live_ws

    result = live_ws.run(argparse.Namespace(sessions=[1, 3], utterances=4, threads=1, timeout=60.0))
    assert [(r["sessions"], r["utterances"]) for r in result["rows"]] == [(1, 4), (3, 12)]
    assert all(r["errors"] == 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in result["rows"])
    text = live_ws.render(result)
    assert "| sessions at once |" in text and "ERRORS" not in text and "cores" in text
