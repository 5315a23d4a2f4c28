"""Interrupted runs resume to the results of uninterrupted ones: atomic resume state, the CSV log
continued, early stopping kept, the grid runner's cells; and (integration) real ``kill -9``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

import redifu
from conftest import TINY_SYNTHETIC
from redifu.config import load_config
from redifu.experiments.grid import load_grid
from redifu.experiments.runner import run_cell
from redifu.training.resume import AtomicCheckpointIO, _ResumableWriter
from redifu.training.run import train

TINY = [f"data.synthetic.{k}={json.dumps(v)}" for k, v in TINY_SYNTHETIC.items()] + [
    "model.hidden_size=16", "model.num_heads=2", "model.window=3", "model.fusion_layers=1", "model.graph_layers=1",
    "training.batch_size=4", "training.progress_bar=false", "training.threads=1", "training.lr=3e-3",
]
SAME = ("selected_epoch", "epochs_run", "dev", "test", "history")


def assert_same_run(resumed: Path, reference: Path) -> dict:
    """Same metrics, same CSV log, same selected model; returns the resumed run's metrics."""
    ours, theirs = (json.loads((d / "metrics.json").read_text()) for d in (resumed, reference))
    for key in SAME:
        assert ours[key] == theirs[key], key
    assert (resumed / "logs" / "metrics.csv").read_bytes() == (reference / "logs" / "metrics.csv").read_bytes()
    ours_weights, their_weights = (load_file(d / "checkpoint" / "model.safetensors") for d in (resumed, reference))
    assert ours_weights.keys() == their_weights.keys()
    assert all(torch.equal(ours_weights[k], their_weights[k]) for k in ours_weights)
    return ours


# --- fast unit tests ---------------------------------------------------------------------------

class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle")


def test_atomic_checkpoint_io_keeps_the_old_file_when_a_write_fails(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1, "weights": torch.ones(3)}, path)
    before = path.read_bytes()
    # the big tensor is written before the failure, so the temporary file was half-written
    with pytest.raises(RuntimeError, match="cannot pickle"):
        io.save_checkpoint({"weights": torch.zeros(100_000), "broken": Unpicklable()}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert torch.load(path, weights_only=True)["epoch"] == 1


def test_csv_log_keeps_the_resumed_epochs_and_drops_a_cut_line(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_bytes(b"dev/loss,epoch,step,train/loss\r\n1.5,0,2,\r\n,0,2,1.4\r\n1.2,1,5,\r\n,1,5,1.1\r\n1.0,2,8,\r\n,2")
    writer = _ResumableWriter(str(tmp_path))  # Lightning's writer would delete metrics.csv here
    assert path.is_file()
    writer.keep_epochs_before(2)
    assert path.read_bytes() == b"dev/loss,epoch,step,train/loss\r\n1.5,0,2,\r\n,0,2,1.4\r\n1.2,1,5,\r\n,1,5,1.1\r\n"
    writer.log_metrics({"dev/loss": 0.9, "epoch": 2}, step=8)
    writer.save()
    assert path.read_bytes().endswith(b",1,5,1.1\r\n0.9,2,8,\r\n")
    writer.keep_epochs_before(0)  # a fresh start in an old run directory
    assert not path.exists()


@pytest.mark.integration
def test_an_early_stopped_run_stays_stopped_on_resume(tmp_path):
    # patience 1 stops the tiny run after its first epoch without a better dev F1 (epoch 4)
    config = load_config(None, [*TINY, "training.max_epochs=8", "training.patience=1"])
    output = tmp_path / "stopped"
    first = train(config, output)
    assert first["epochs_run"] < 8, "early stopping did not trigger; the test needs another setting"
    (output / "metrics.json").unlink()  # killed after the last state, before the results
    again = train(config, output, resume=True)
    for key in SAME:
        assert again[key] == first[key], key


class DieInEpoch(Callback):
    """Raise at the first step of ``epoch``, after the previous epoch's state was committed."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("killed")


@pytest.mark.integration
def test_a_run_killed_in_its_first_epoch_starts_again_on_resume(tmp_path):
    config = load_config(None, [*TINY, "training.max_epochs=2"])
    reference = tmp_path / "reference"
    train(config, reference)
    output = tmp_path / "reused"
    train(load_config(None, [*TINY, "training.max_epochs=2", "training.lr=1e-2"]), output)  # an older run
    (output / "lightning" / ".last.ckpt.pending").write_bytes(b"PK\x03\x04 cut")  # and a write it never finished
    with pytest.raises(RuntimeError, match="killed"):
        train(config, output, callbacks=[DieInEpoch(0)])
    # the older run's state is gone: resuming cannot continue it under this run's config
    assert not list((output / "lightning").iterdir())
    metrics = train(config, output, resume=True)  # no state: starts again
    assert metrics["resumed_at_epochs"] == []
    assert_same_run(output, reference)


@pytest.mark.integration
def test_grid_cell_interrupted_mid_training_resumes(tmp_path):
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(
        f"seeds: [1]\nbaseline: full\noverrides: {json.dumps([*TINY, 'training.max_epochs=3'])}\n"
        "datasets: {tiny: {config: null}}\nvariants: {full: []}\nablation: [{datasets: [tiny], variants: []}]\n"
    )
    grid = load_grid(grid_file)
    (cell,) = grid.plan()
    reference = run_cell(grid, cell, tmp_path / "reference")
    directory = tmp_path / "interrupted" / cell.directory
    config = load_config(None, [*grid.cell_overrides(cell), "training.progress_bar=false"])
    with pytest.raises(RuntimeError, match="killed"):
        train(config, directory, callbacks=[DieInEpoch(2)])
    assert (directory / "lightning" / "last.ckpt").is_file() and not (directory / "metrics.json").exists()
    record = run_cell(grid, cell, tmp_path / "interrupted")
    assert record["trained_now"] and record["epochs_run"] == 3
    for key in ("selected_epoch", "dev", "test", "evaluations"):
        assert record[key] == reference[key], key
    metrics = assert_same_run(directory, tmp_path / "reference" / cell.directory)
    assert metrics["resumed_at_epochs"] == [2]


# --- integration: a real kill -9 of `redifu train` ---------------------------------------------

EPOCHS = 6


def redifu_train(output: Path, *arguments: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(redifu.__file__).parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])]))
    log = open(output.parent / f"{output.name}.log", "ab")
    command = [sys.executable, "-m", "redifu", "train", "--output", str(output), *arguments]
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def finished_epochs(output: Path) -> int:
    """Epochs whose training row the CSV log holds (complete lines only)."""
    path = output / "logs" / "metrics.csv"
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]
    if len(lines) < 2:
        return 0
    header = lines[0].rstrip("\r\n").split(",")
    column = header.index("train/loss") if "train/loss" in header else None
    if column is None:
        return 0
    return sum(1 for line in lines[1:] if line.rstrip("\r\n").split(",")[column] != "")


def kill_after(output: Path, epochs: int, timeout: float = 300) -> None:
    """Start `redifu train`, SIGKILL it once ``epochs`` epochs are logged and a resume state exists."""
    process = redifu_train(output, f"training.max_epochs={EPOCHS}", *TINY)
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if finished_epochs(output) >= epochs and (output / "lightning" / "last.ckpt").is_file():
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        if process.poll() is None and time.monotonic() >= deadline:
            process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, f"the run ended by itself ({process.returncode}) before the kill"
    assert not (output / "metrics.json").exists()


def resume(output: Path) -> None:
    process = redifu_train(output, "--resume")
    assert process.wait(timeout=300) == 0, (output.parent / f"{output.name}.log").read_text()[-3000:]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    # in this process (what `redifu train` with these overrides runs), to save a start-up
    output = tmp_path_factory.mktemp("kill") / "uninterrupted"
    train(load_config(None, [f"training.max_epochs={EPOCHS}", *TINY]), output)
    return output


@pytest.fixture(scope="module")
def killed_after_one(uninterrupted) -> Path:
    output = uninterrupted.parent / "killed-after-1"
    kill_after(output, 1)
    shutil.copytree(output, output.with_name("killed-after-1-as-killed"))  # before it is resumed
    return output


@pytest.mark.integration
@pytest.mark.parametrize("epochs", [1, 2])
def test_killed_run_resumes_to_the_uninterrupted_result(uninterrupted, killed_after_one, epochs):
    output = killed_after_one
    if epochs == 2:
        output = uninterrupted.parent / "killed-after-2"
        kill_after(output, 2)
    resume(output)
    metrics = assert_same_run(output, uninterrupted)
    (epoch,) = metrics["resumed_at_epochs"]  # the state held the last epoch logged, or the one before
    assert max(1, epochs - 1) <= epoch <= epochs + 1 < EPOCHS


@pytest.mark.integration
def test_kill_during_a_write_is_ignored_on_resume(uninterrupted, killed_after_one, tmp_path):
    # killed_after_one as it was killed, then what a kill during each write would have left
    output = tmp_path / "killed-mid-write"
    shutil.copytree(killed_after_one.with_name("killed-after-1-as-killed"), output)
    lightning = output / "lightning"
    state = (lightning / "last.ckpt").read_bytes()
    (lightning / ".last.ckpt.x1y2z3.tmp").write_bytes(state[: len(state) // 2])  # the temporary, cut short
    (lightning / ".last.ckpt.pending").write_bytes(state[: len(state) // 3])  # a state never committed
    log = output / "logs" / "metrics.csv"
    lines = log.read_bytes().splitlines(keepends=True)
    fields = lines[-1].split(b",")
    fields[lines[0].split(b",").index(b"epoch")] = b"3"  # a row of an epoch the state does not hold
    later = b",".join(fields)
    log.write_bytes(b"".join(lines) + later + later[: len(later) // 2])  # ... and one cut short
    os.replace(output / "checkpoint", output / ".checkpoint.old")  # killed between the two renames
    # resumed in this process (to save a start-up; the other cases run `redifu train --resume`)
    train(load_config(output / "config.yaml", []), output, resume=True)
    assert_same_run(output, uninterrupted)
    assert sorted(p.name for p in lightning.iterdir()) == ["last.ckpt"]
    assert not (output / ".checkpoint.old").exists()
