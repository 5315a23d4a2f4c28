"""Distributed data-parallel training on 2 CPU processes (gloo), with plain ``ddp``: it refuses
any parameter that gets no gradient, so these runs also prove that a config builds only what
its loss reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_cli import TINY

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

pytestmark = pytest.mark.integration


def _train_ddp(output: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "redifu.cli", "train", "--output", str(output), *extra, *TINY,
         "training.devices=2", "training.accelerator=cpu", "training.strategy=ddp", "training.max_epochs=2",
         "training.threads=1"],
        capture_output=True, text=True, timeout=600,
    )


def test_ddp_two_cpu_processes(tmp_path):
    output = tmp_path / "ddp"
    result = _train_ddp(output)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((output / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [0, 1]
    assert (output / "checkpoint" / "model.safetensors").is_file()
    # one table printed, by rank 0 only
    assert result.stdout.count("weighted F1") == 1


def test_ddp_with_the_authors_recipe(tmp_path):
    """Fixed logit weights: the fused classifier and projection are not built, so plain DDP runs."""
    output = tmp_path / "authors"
    result = _train_ddp(output, "--config", str(CONFIGS / "authors-recipe-meld.yaml"))
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((output / "checkpoint" / "config.json").read_text())
    assert config["logit_weights"] == {"text": 3.0, "audio": 1.0, "visual": 0.3}
    assert config["fusion"] == "symmetric"
    metrics = json.loads((output / "metrics.json").read_text())
    evaluated = subprocess.run(
        [sys.executable, "-m", "redifu.cli", "evaluate", "--checkpoint", str(output / "checkpoint"),
         "--output", str(tmp_path / "eval.json")], capture_output=True, text=True, timeout=300,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads((tmp_path / "eval.json").read_text())["weighted_f1"] == metrics["test"]["weighted_f1"]
