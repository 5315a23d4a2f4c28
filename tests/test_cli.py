"""The command line as a user runs it: train, evaluate, help, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import TINY_SYNTHETIC
from redifu.cli import main

TINY = [f"data.synthetic.{k}={json.dumps(v)}" for k, v in TINY_SYNTHETIC.items()] + [
    "model.hidden_size=16", "model.num_heads=2", "model.window=3", "model.fusion_layers=1", "model.graph_layers=1",
    "training.max_epochs=2", "training.batch_size=4", "training.progress_bar=false", "training.threads=1",
]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "redifu.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    output = tmp_path_factory.mktemp("cli") / "run"
    result = run_cli("train", "--output", str(output), *TINY)
    assert result.returncode == 0, result.stderr
    return output, result


@pytest.mark.integration
def test_train_prints_table_and_writes_interface_files(trained):
    output, result = trained
    assert "weighted F1" in result.stdout and "test" in result.stdout
    metrics = json.loads((output / "metrics.json").read_text())
    assert isinstance(metrics["selected_epoch"], int)
    for split in ("dev", "test"):
        assert {"weighted_f1", "accuracy", "macro_f1"} <= set(metrics[split])
    for name in ("checkpoint/config.json", "checkpoint/model.safetensors", "confusion_matrix.png", "curves.png"):
        assert (output / name).is_file()


@pytest.mark.integration
def test_evaluate_reproduces_test_metrics(trained, tmp_path):
    output, _ = trained
    result = run_cli("evaluate", "--checkpoint", str(output / "checkpoint"), "--output", str(tmp_path / "eval.json"))
    assert result.returncode == 0, result.stderr
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    expected = json.loads((output / "metrics.json").read_text())["test"]
    for key in ("weighted_f1", "accuracy", "macro_f1", "confusion_matrix"):
        assert evaluated[key] == expected[key]


@pytest.mark.integration
def test_train_several_seeds_reports_mean_and_std(tmp_path):
    code = main(["train", "--output", str(tmp_path / "seeds"), "--seeds", "1", "2", *TINY,
                 "training.max_epochs=1"])
    assert code == 0
    summary = json.loads((tmp_path / "seeds" / "summary.json").read_text())
    assert summary["seeds"] == [1, 2]
    assert len(summary["test"]["weighted_f1"]["values"]) == 2
    assert (tmp_path / "seeds" / "seed-1" / "metrics.json").is_file()


@pytest.mark.parametrize("args,needle", [
    (["train", "model.hiden_size=3"], "model.hiden_size"),
    (["train", "training.lr=fast"], "training.lr"),
    (["train", "--config", "missing.yaml"], "missing.yaml"),
    (["train", "data.synthetic.colour=1"], "colour"),
    (["evaluate", "--checkpoint", "nowhere"], "nowhere"),
])
def test_user_errors_are_one_line_and_leave_nothing(tmp_path, capsys, args, needle):
    if args[0] == "train":
        args = [*args[:1], "--output", str(tmp_path / "out"), *args[1:]]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("redifu: error:") and needle in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [[], ["train"], ["evaluate"]])
def test_help_is_complete(command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0
    assert "usage: redifu" in result.stdout
    if command == ["train"]:
        for word in ("--config", "--output", "--seeds", "--resume", "model.hidden_size", "training.max_epochs",
                     "data.preset"):
            assert word in result.stdout


@pytest.mark.integration
def test_train_on_a_stored_dataset_path(tiny_corpus, tmp_path):
    from redifu.data.store import save_corpus

    save_corpus(tiny_corpus, tmp_path / "dataset")
    code = main(["train", "--output", str(tmp_path / "run"), f"data.path={tmp_path / 'dataset'}",
                 *[o for o in TINY if not o.startswith("data.")], "training.max_epochs=1"])
    assert code == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["dataset"]["name"] == tiny_corpus.metadata.name


def test_dev_only_training_never_reads_test(tiny_corpus, tmp_path, capsys):
    from redifu.data.store import save_corpus

    save_corpus(tiny_corpus, tmp_path / "dataset")
    (tmp_path / "dataset" / "test.safetensors").write_bytes(b"not a tensor file")  # reading it would fail
    code = main(["train", "--dev-only", "--output", str(tmp_path / "run"), "--seeds", "1", "2",
                 f"data.path={tmp_path / 'dataset'}", *[o for o in TINY if not o.startswith("data.")],
                 "training.max_epochs=1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "dev " in printed and "test " not in printed
    for seed in (1, 2):
        metrics = json.loads((tmp_path / "run" / f"seed-{seed}" / "metrics.json").read_text())
        assert metrics["test"] is None and metrics["dev"]["weighted_f1"] >= 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test"] is None and len(summary["dev"]["weighted_f1"]["values"]) == 2


def test_missing_data_path_is_one_line(tmp_path, capsys):
    assert main(["train", "--output", str(tmp_path / "run"), f"data.path={tmp_path / 'nowhere'}"]) == 2
    err = capsys.readouterr().err
    assert "data.path" in err and "nowhere" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()
