"""Distributed data-parallel training on 2 CPU processes (gloo)."""

from __future__ import annotations

import json
import subprocess
import sys

from test_cli import TINY


def test_ddp_two_cpu_processes(tmp_path):
    output = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "redifu.cli", "train", "--output", str(output), *TINY,
         "training.devices=2", "training.accelerator=cpu", "training.strategy=ddp", "training.max_epochs=2"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((output / "metrics.json").read_text())
    assert len(metrics["history"]) == 2
    assert 0 <= metrics["test"]["weighted_f1"] <= 100
    assert (output / "checkpoint" / "model.safetensors").is_file()
    # one table printed, by rank 0 only
    assert result.stdout.count("weighted F1") == 1
