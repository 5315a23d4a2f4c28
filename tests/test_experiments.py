"""Experiment grids: corruption, paired bootstrap, grid files, the resumable runner, the results page."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import f1_score

from redifu.config import load_config
from redifu.experiments.corruption import Corruption, corrupt_corpus, corrupt_dialogues, feature_moments
from redifu.experiments.grid import load_grid
from redifu.experiments.results_page import _column_overrides, write_results
from redifu.experiments.runner import cell_finished, load_records, run_grid
from redifu.experiments.stats import paired_difference, weighted_f1
from redifu.errors import ConfigError

from conftest import TINY_DATA_OVERRIDES, TINY_MODEL_OVERRIDES

REPO = Path(__file__).resolve().parents[1]


# --- corruption -------------------------------------------------------------------------------

def test_gaussian_noise_has_the_requested_snr(tiny_corpus):
    test = tiny_corpus.splits["test"]
    moments = feature_moments(tiny_corpus.splits["train"], ["audio", "visual"])
    noisy = corrupt_dialogues(test, Corruption("gaussian", 0.0), moments, seed=0)
    added = np.concatenate([n.features["audio"] - d.features["audio"] for n, d in zip(noisy, test)])
    # 0 dB: the noise has the training split's per-dimension standard deviation
    ratio = added.std(0) / moments["audio"][1]
    assert abs(float(np.median(ratio)) - 1.0) < 0.1
    for n, d in zip(noisy, test):
        np.testing.assert_array_equal(n.features["text"], d.features["text"])  # text untouched
        assert n.features["audio"].dtype == np.float32


@pytest.mark.parametrize("kind", ["burst", "drop"])
def test_share_corruptions_hit_about_that_share(tiny_corpus, kind):
    dialogues = tiny_corpus.splits["train"]
    moments = feature_moments(dialogues, ["audio", "visual"])
    corrupted = corrupt_dialogues(dialogues, Corruption(kind, 0.5), moments, seed=3)
    changed = np.concatenate([np.any(c.features["visual"] != d.features["visual"], axis=1)
                              for c, d in zip(corrupted, dialogues)])
    assert 0.35 < changed.mean() < 0.65
    if kind == "drop":
        rows = np.concatenate([c.features["visual"] for c in corrupted])[changed]
        np.testing.assert_allclose(rows, np.broadcast_to(moments["visual"][0], rows.shape), rtol=1e-5)


def test_drop_all_removes_the_modality_and_is_deterministic(tiny_corpus):
    dialogues = tiny_corpus.splits["dev"]
    moments = feature_moments(tiny_corpus.splits["train"], ["audio", "visual"])
    first = corrupt_dialogues(dialogues, Corruption("drop", 1.0), moments, seed=5)
    again = corrupt_dialogues(dialogues, Corruption("drop", 1.0), moments, seed=5)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.features["audio"], b.features["audio"])
        assert np.ptp(a.features["audio"], axis=0).max() == 0.0  # every row is the mean


def test_corrupt_corpus_keeps_labels_and_records_provenance(tiny_corpus):
    corrupted = corrupt_corpus(tiny_corpus, Corruption("burst", 0.25), seed=1)
    assert corrupted.provenance["corruption"] == {"kind": "burst", "level": 0.25, "seed": 1}
    for split, dialogues in tiny_corpus.splits.items():
        for a, b in zip(dialogues, corrupted.splits[split]):
            np.testing.assert_array_equal(a.labels, b.labels)
    corrupted.validate()


def test_corruption_levels_are_checked():
    with pytest.raises(ValueError, match="share"):
        Corruption("burst", 1.5)
    with pytest.raises(ValueError, match="kind"):
        Corruption("blur", 0.5)
    assert Corruption.parse("gaussian=-5") == Corruption("gaussian", -5.0)


# --- statistics -------------------------------------------------------------------------------

def test_weighted_f1_matches_sklearn_and_vectorises():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 300)
    predictions = np.where(rng.random((3, 300)) < 0.5, labels, rng.integers(0, 5, (3, 300)))
    predictions[0, predictions[0] == 4] = 3  # a class never predicted
    scores = weighted_f1(labels, predictions, 5)
    for row, score in zip(predictions, scores):
        assert score == pytest.approx(100 * f1_score(labels, row, average="weighted", zero_division=0))


def test_paired_bootstrap_separates_a_real_gap_from_none():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 1500)
    good = np.where(rng.random((3, 1500)) < 0.8, labels, rng.integers(0, 4, (3, 1500)))
    bad = np.where(rng.random((3, 1500)) < 0.6, labels, rng.integers(0, 4, (3, 1500)))
    gap = paired_difference(labels, good, bad, 4, n_resamples=500)
    assert gap.low > 5 and gap.verdict == "better"
    assert paired_difference(labels, bad, good, 4, n_resamples=500).verdict == "worse"
    twin = np.where(rng.random((3, 1500)) < 0.8, labels, rng.integers(0, 4, (3, 1500)))
    none = paired_difference(labels, good, twin, 4, n_resamples=500)
    assert none.low < 0 < none.high and none.verdict == "no clear difference"
    with pytest.raises(ValueError, match="utterances"):
        paired_difference(labels[:10], good, bad, 4)


# --- grid files -------------------------------------------------------------------------------

def write_tiny_grid(path: Path, seeds: str = "[1]") -> Path:
    overrides = [*TINY_DATA_OVERRIDES, *TINY_MODEL_OVERRIDES, "training.max_epochs=2", "training.batch_size=4"]
    path.write_text(f"""
seeds: {seeds}
baseline: full
overrides: {json.dumps(overrides)}
datasets:
  tiny: {{title: tiny synthetic, config: null}}
  missing: {{config: null, path: {path.parent / 'nowhere'}, prepare: make it}}
variants:
  full: []
  denoiser off: [model.denoiser=off]
  graph off: [model.graph=off]
  speaker-blind: [model.speaker_aware=false]
ablation:
  - {{datasets: [tiny], variants: [graph off]}}
speaker_graph:
  - {{datasets: [tiny], variants: [speaker-blind]}}
robustness:
  dataset: tiny
  variants: [full, denoiser off]
  test_time: {{gaussian: [0, -10], drop: [1.0]}}
  train_and_test: {{variants: [full], burst: [0.5]}}
real_text:
  columns: [ReDiFu, no graph, BiGRU]
  rows:
    - {{dataset: tiny, features: frozen, variants: [full, graph off, "-"]}}
  published:
    - {{method: Someone, encoder: big, selection: dev, scores: {{tiny: 99.9}}}}
  note: quoted for comparison.
""")
    return path


def test_grid_plans_each_cell_once(tmp_path):
    grid = load_grid(write_tiny_grid(tmp_path / "grid.yaml", seeds="[1, 2]"))
    cells = grid.plan()
    # full, graph off, speaker-blind, denoiser off (clean) + full trained on burst, two seeds each
    assert len(cells) == 10
    full = [c for c in cells if c.variant == "full" and c.train_corruption is None]
    assert [c.name for c in full[0].test_corruptions] == ["gaussian=0", "gaussian=-10", "drop=1"]
    assert cells[-1].train_corruption is not None  # corrupted training runs come last
    assert "missing" not in grid.quick().datasets and grid.quick().seeds == (1,)
    grid.ablation.append((("tiny", "missing"), ("graph off",)))
    assert grid.quick().ablation[-1] == (("tiny",), ("graph off",))  # the page never meets a dropped dataset


@pytest.mark.parametrize("text, message", [
    ("seeds: [1]\ndatasets: {a: {config: null}}\nvariants: {full: []}\nablation: [{datasets: [b], variants: []}]",
     "ablation\\[0\\].datasets: 'b' is not defined"),
    ("seeds: [1]\ndatasets: {a: {config: null}}\nvariants: {full: []}\nrobustness: {dataset: a, test_time: {blur: [1]}}",
     "robustness.test_time.blur: unknown corruption"),
    ("seeds: [1]\ndatasets: {a: {config: null}}\nvariants: {full: []}\nrobustness: {dataset: a, test_time: {burst: [2]}}",
     "expected 0..1"),
    ("seeds: [1]\ndatasets: {a: {config: null}}\nvariants: {full: []}\ncolour: red", "colour: unknown key"),
    ("seeds: [1]\ndatasets: {a: {config: null}}\nvariants: {full: []}\n"
     "real_text: {columns: [x, y], rows: [{dataset: a, features: f, variants: [full]}]}", "one variant per column"),
    ("seeds: [1]\ndatasets: {a: {config: null}}\nvariants: {full: []}\n"
     "real_text: {columns: [x], rows: [{dataset: a, features: f, variants: [nope]}]}", "'nope' is not defined"),
])
def test_grid_mistakes_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_grid(path)


def test_a_real_text_column_with_a_variant_per_dataset_names_each_one(tmp_path):
    grid = load_grid(write_tiny_grid(tmp_path / "grid.yaml"))
    grid.variants.update({"gru a": ("model.recurrent=bigru", "training.lr=0.001"),
                          "gru b": ("model.recurrent=bigru", "training.lr=0.0003")})
    rows = [{"variants": ("full", "gru a")}, {"variants": ("full", "gru b")}, {"variants": ("full", "-")}]
    results = SimpleNamespace(grid=grid)
    assert _column_overrides(results, rows, 0) == "(the dataset config)"
    assert _column_overrides(results, rows, 1) == ("gru a: model.recurrent=bigru, training.lr=0.001; "
                                                   "gru b: model.recurrent=bigru, training.lr=0.0003")
    assert _column_overrides(results, rows[:1], 1) == "model.recurrent=bigru, training.lr=0.001"


# --- runner and results page ------------------------------------------------------------------

@pytest.mark.integration
def test_grid_runs_resumes_and_writes_the_results_page(tmp_path):
    grid = load_grid(write_tiny_grid(tmp_path / "grid.yaml"))
    del grid.datasets["missing"]
    output = tmp_path / "runs"
    messages: list[str] = []
    records = run_grid(grid, output, report=messages.append)
    assert len(records) == 5 and messages[0].startswith("5 cells, 0 already finished")
    full = json.loads((output / "tiny" / "full" / "seed-1" / "cell.json").read_text())
    assert full["seed"] == 1 and full["data_fingerprint"] and "commit" in full
    assert full["config"]["training"]["seed"] == 1 and set(full["evaluations"]) == {"gaussian=0", "gaussian=-10",
                                                                                   "drop=1"}
    metrics = json.loads((output / "tiny" / "full" / "seed-1" / "metrics.json").read_text())
    assert full["test"]["weighted_f1"] == metrics["test"]["weighted_f1"]
    trained = json.loads((output / "tiny" / "full" / "train-burst=0.5" / "seed-1" / "cell.json").read_text())
    assert trained["train_corruption"] == "burst=0.5"
    cells, loaded = load_records(grid, output)
    assert len(loaded) == 5
    labels = loaded[cells[0].key]["predictions"]["labels"]
    assert labels.shape == loaded[cells[0].key]["predictions"]["clean"].shape

    # finished cells are not rerun
    messages.clear()
    run_grid(grid, output, report=messages.append)
    assert messages == ["5 cells, 5 already finished, 0 to run (1 job(s))"]

    written = write_results(grid, output, tmp_path / "docs", command="redifu experiment --grid grid.yaml",
                            machine="test")
    page = (tmp_path / "docs" / "RESULTS.md").read_text()
    assert {p.name for p in written} == {"RESULTS.md", "results-summary.json", "robustness_test-time.png",
                                        "robustness_train-and-test.png", "speaker_graph.png"}
    assert "from 5 of 5 cells" in page and "## Summary" in page and "Claim 1" in page
    assert "| graph off |" in page and "full − denoiser off at -10 dB" in page
    assert "n/a" not in page.split("## Provenance")[0]
    assert "(before," not in page
    real_text = page.split("## 4. Real text")[1].split("## Provenance")[0]
    assert "| tiny synthetic | frozen |" in real_text and "| — |" in real_text  # "-" = a column not run
    assert "| Someone | big | dev | 99.9 |" in real_text and "no graph: `model.graph=off`" in real_text

    # a rerun against that summary shows the earlier figure beside each comparison
    summary = json.loads((tmp_path / "docs" / "results-summary.json").read_text())
    claim1 = next(title for title in summary["claims"] if title.startswith("Claim 1"))
    label, first = next(iter(summary["claims"][claim1]["comparisons"].items()))
    earlier = tmp_path / "earlier.json"
    summary["claims"][claim1]["comparisons"][label] = dict(first, mean=9.87, low=9.5, high=10.25, verdict="better")
    earlier.write_text(json.dumps(summary))
    grid.earlier = {"summary": str(earlier), "note": "the old run"}
    write_results(grid, output, tmp_path / "docs", command="redifu experiment --grid grid.yaml", machine="test")
    page = (tmp_path / "docs" / "RESULTS.md").read_text()
    assert f"- {label}: " in page and "(before, the old run: +9.87 [+9.50, +10.25] → better)" in page
    assert "Before (the old run): held" in page


@pytest.mark.integration
def test_unfinished_evaluations_are_added_without_retraining(tmp_path):
    grid = load_grid(write_tiny_grid(tmp_path / "grid.yaml"))
    del grid.datasets["missing"]
    grid.ablation, grid.speaker_graph = [], []
    grid.robustness = {**grid.robustness, "test_time": {"gaussian": [0]}, "train_and_test": {}}
    output = tmp_path / "runs"
    run_grid(grid, output, report=lambda _: None)
    checkpoint = output / "tiny" / "full" / "seed-1" / "checkpoint" / "model.safetensors"
    stamp = checkpoint.stat().st_mtime_ns
    grid.robustness["test_time"] = {"gaussian": [0], "burst": [0.5]}
    cell = next(c for c in grid.plan() if c.variant == "full")
    assert not cell_finished(cell, output)
    run_grid(grid, output, report=lambda _: None)
    assert cell_finished(cell, output) and checkpoint.stat().st_mtime_ns == stamp
    record = json.loads((output / cell.directory / "cell.json").read_text())
    assert record["trained_now"] is False and "burst=0.5" in record["evaluations"]


@pytest.mark.integration
def test_experiment_command_quick_mode_skips_missing_data(tmp_path):
    grid = write_tiny_grid(tmp_path / "grid.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "redifu", "experiment", "--grid", str(grid), "--quick", "--output",
         str(tmp_path / "runs"), "--write", str(tmp_path / "docs")],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipping missing" in result.stdout and "make it" in result.stdout
    assert (tmp_path / "docs" / "RESULTS.md").is_file()


@pytest.mark.integration
def test_experiment_command_reports_a_bad_grid_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "redifu", "experiment", "--grid", str(tmp_path / "nope.yaml")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "grid file not found" in result.stderr


def test_the_shipped_grid_file_is_valid():
    grid = load_grid(REPO / "grids" / "results.yaml")
    assert len(grid.seeds) >= 3 and grid.robustness and grid.speaker_graph
    variants = {v for _, vs in grid.ablation for v in vs}
    assert {"denoiser off", "denoiser temporal", "graph off", "graph modality-only", "fusion concat",
            "fusion symmetric", "text only"} <= variants
    assert any(v.startswith("authors' recipe") for v in variants)


def test_the_real_text_grid_is_valid_and_builds_every_config():
    grid = load_grid(REPO / "grids" / "real-text.yaml")
    assert len(grid.seeds) >= 3 and grid.real_text["columns"][2] == "BiGRU"
    for cell in grid.plan():  # every override is a real option (the datasets' files need not exist)
        load_config(grid.datasets[cell.dataset].config, grid.cell_overrides(cell))


@pytest.mark.slow
def test_the_shipped_grid_runs_in_quick_mode(tmp_path):
    """Issue 5's CI check of the whole pipeline on the real grid file (numbers not checked)."""
    result = subprocess.run(
        [sys.executable, "-m", "redifu", "experiment", "--grid", str(REPO / "grids" / "results.yaml"), "--quick",
         "--jobs", "2", "--output", str(tmp_path / "runs"), "--write", str(tmp_path / "docs")],
        capture_output=True, text=True, cwd=REPO, timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    page = (tmp_path / "docs" / "RESULTS.md").read_text()
    assert "## 2. Robustness" in page and "## 3. Speaker graph" in page
    assert (tmp_path / "docs" / "robustness_test-time.png").stat().st_size > 10_000
