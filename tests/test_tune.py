"""``redifu tune``: space checks, a search end to end (best.json, best.yaml that trains), the test split
never read, interrupted trials retried, and a killed search resumed."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("optuna")

from conftest import TINY_MODEL_OVERRIDES, TINY_SYNTHETIC
from redifu.cli import main
from redifu.config import load_config
from redifu.data.store import save_corpus
from redifu.errors import ConfigError, DataError
from redifu.tune import load_space

TINY_DATA = [f"data.synthetic.{k}={json.dumps(v)}" for k, v in TINY_SYNTHETIC.items()]
TINY_TRAINING = ["training.max_epochs=1", "training.batch_size=4", "training.progress_bar=false",
                 "training.threads=1", "training.logger=none"]
SPACE = "training.lr: {low: 1.0e-3, high: 5.0e-3, log: true}\nmodel.dropout: {low: 0.1, high: 0.3}\n" \
        "model.window: {choices: [2, 3]}\n"


@pytest.mark.parametrize("text,needles", [
    ("training.lr: 1.0e-4\n", ["training.lr", "expected a mapping"]),
    ("training.lr: {low: 1.0e-3, high: 1.0e-4}\n", ["training.lr", "low must be < high"]),
    ("training.lr: {low: 0, high: 1.0e-3, log: true}\n", ["training.lr", "low > 0"]),
    ("training.lr: {low: 1.0e-4, hgh: 1.0e-3}\n", ["training.lr", "unknown field 'hgh'"]),
    ("training.lr: {low: 1.0e-4}\n", ["training.lr", "missing 'high'"]),
    ("training.lr: {low: 1.0e-4, high: fast}\n", ["training.lr", "high must be a number"]),
    ("training.lr: {low: 1.0e-4, high: 1.0e-3, log: yes}\n", ["training.lr", "log must be true or false"]),
    ("training.batch_size: {low: 1, high: 8}\n", ["training.batch_size", "expected an integer"]),
    ("model.dropout: {low: 0.1, high: 0.5, int: true}\n", ["model.dropout", "integer low and high"]),
    ("training.max_epochs: {low: 0, high: 3, int: true}\n", ["training.max_epochs", "must be >= 1"]),
    ("model.hiden_size: {choices: [8, 16]}\n", ["model.hiden_size", "unknown option"]),
    ("model.num_classes: {choices: [2, 3]}\n", ["model.num_classes", "dataset's metadata"]),
    ("model.window: {choices: []}\n", ["model.window", "non-empty list"]),
    ("model.window: {choices: [2, 2]}\n", ["model.window", "duplicates"]),
    ("model.window: {choices: [2, 3], low: 1, high: 4}\n", ["model.window", "not both"]),
    ("data.modalities: {choices: [[text], [text, audio]]}\n", ["data.modalities", "single values"]),
    ("model.fusion: {choices: [concat, sideways]}\n", ["model.fusion", "sideways"]),
    ("lr: {low: 1.0e-4, high: 1.0e-3}\n", ["lr", "dotted"]),
    ("training.seed: {choices: [1, 2]}\n", ["training.seed", "--confirm"]),
    ("training.lr: [low, high\n", ["invalid YAML"]),
    ("", ["expected a mapping of config keys"]),
])
def test_space_mistakes_are_one_line_config_errors(tmp_path, text, needles):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_space(path, {})
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    for needle in needles:
        assert needle in message


def test_space_is_checked_against_the_base_config(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("model.num_heads: {choices: [2, 3]}\n")  # 3 heads do not divide hidden_size 16
    with pytest.raises(ConfigError, match="model.num_heads"):
        load_space(path, {"model": {"hidden_size": 16}})
    path.write_text(SPACE)
    space = load_space(path, {})
    assert list(space) == ["training.lr", "model.dropout", "model.window"]
    assert space["training.lr"].log and space["model.window"].choices == (2, 3)


def test_space_mistake_through_the_cli_is_one_line(tmp_path, capsys):
    (tmp_path / "space.yaml").write_text("model.hiden_size: {choices: [8, 16]}\n")
    code = main(["tune", "--space", str(tmp_path / "space.yaml"), "--trials", "1", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "space.yaml" in err and "model.hiden_size" in err
    assert not (tmp_path / "out").exists()


def test_missing_optuna_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    (tmp_path / "space.yaml").write_text(SPACE)
    code = main(["tune", "--space", str(tmp_path / "space.yaml"), "--trials", "1", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and 'pip install "redifu[tune]"' in err


def test_combinations_the_model_refuses_fail_their_trials_and_end_the_search(tmp_path, capsys):
    # each value is valid with the base config (hidden 16, 2 heads), the pair is not (2 x 8 heads
    # of the dual denoiser do not divide 24)
    (tmp_path / "space.yaml").write_text("model.hidden_size: {choices: [24]}\nmodel.num_heads: {choices: [8]}\n")
    code = main(["tune", "--space", str(tmp_path / "space.yaml"), "--trials", "2", "--output", str(tmp_path / "out"),
                 *TINY_DATA, *TINY_MODEL_OVERRIDES, *TINY_TRAINING])
    captured = capsys.readouterr()
    assert code == 2 and captured.err.count("\n") == 1
    assert "10 trials failed" in captured.err and "must divide hidden_size" in captured.err
    assert captured.out.count(": failed (model.") == 10
    assert not (tmp_path / "out" / "trials").exists() and not (tmp_path / "out" / "best.json").exists()


@pytest.fixture(scope="module")
def datasets(tiny_corpus, tmp_path_factory):
    """The tiny corpus stored twice: intact, and with its test split's file corrupted."""
    root = tmp_path_factory.mktemp("datasets")
    intact = save_corpus(tiny_corpus, root / "intact")
    broken = save_corpus(tiny_corpus, root / "no-test")
    (broken / "test.safetensors").write_bytes(b"not safetensors")
    return intact, broken


def test_training_without_test_never_reads_it(datasets, tmp_path):
    from redifu.training.run import train

    _, broken = datasets
    config = load_config(None, [f"data.path={broken}", *TINY_MODEL_OVERRIDES, *TINY_TRAINING])
    with pytest.raises(DataError, match="test.safetensors"):  # the corruption is noticed by a normal run
        train(config, tmp_path / "with-test")
    metrics = train(config, tmp_path / "dev-only", evaluate_test=False)
    assert metrics["test"] is None and metrics["dev"]["weighted_f1"] >= 0
    assert "test" not in (tmp_path / "dev-only" / "classification_report.txt").read_text()


def test_given_corpus_has_its_test_split_dropped(tiny_corpus, tmp_path, monkeypatch):
    import redifu.training.run as run

    evaluated = []
    real = run.evaluate_split
    monkeypatch.setattr(run, "evaluate_split", lambda model, dialogues, *a, **k: (
        evaluated.append({d.dialogue_id for d in dialogues}), real(model, dialogues, *a, **k))[1])
    config = load_config(None, [*TINY_DATA, *TINY_MODEL_OVERRIDES, *TINY_TRAINING])
    run.train(config, tmp_path / "run", corpus=tiny_corpus, evaluate_test=False)
    test_ids = {d.dialogue_id for d in tiny_corpus.splits["test"]}
    assert evaluated and all(not (ids & test_ids) for ids in evaluated)


@pytest.fixture(scope="module")
def search(datasets, tmp_path_factory):
    """Two trials on the dataset whose test file is corrupted (a trial reading it would fail)."""
    _, broken = datasets
    root = tmp_path_factory.mktemp("tune")
    (root / "space.yaml").write_text(SPACE)
    (root / "base.yaml").write_text("model:\n  hidden_size: 16\n  num_heads: 2\ntraining:\n  lr: 1.0e-3\n")
    args = ["tune", "--config", str(root / "base.yaml"), "--space", str(root / "space.yaml"), "--trials", "2",
            "--output", str(root / "out"), "--seed", "3", f"data.path={broken}",
            *[o for o in TINY_MODEL_OVERRIDES if not o.startswith(("model.hidden_size", "model.num_heads"))],
            *TINY_TRAINING]
    assert main(args) == 0
    return root, args


def test_search_writes_best_json_and_trials(search, capsys):
    root, _ = search
    out = root / "out"
    best = json.loads((out / "best.json").read_text())
    assert best["n_trials"] == 2 and best["n_failed"] == 0 and best["seed"] == 3 and best["study"] == "out"
    assert set(best["params"]) == {"training.lr", "model.dropout", "model.window"}
    assert best["storage"] == f"sqlite:///{(out / 'study.db').resolve()}"
    assert best["command"].startswith("redifu tune --config") and "--trials 2" in best["command"]
    trials = sorted((out / "trials").iterdir())
    assert [t.name for t in trials] == ["trial-0000", "trial-0001"]
    values = [json.loads((t / "metrics.json").read_text()) for t in trials]
    assert all(m["test"] is None for m in values)
    assert best["value"] == max(m["dev"]["weighted_f1"] for m in values)
    assert Path(best["run_dir"]) == out / "trials" / f"trial-{best['best_trial']:04d}"
    table = (out / "trials.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| ") and not line.startswith("| trial")]
    assert len(rows) == 2 and rows[0].startswith(f"| {best['best_trial']} |")  # best first
    assert f"{best['value']:.2f}" in rows[0] and best["command"] in "\n".join(table)


def test_best_yaml_is_the_best_trials_config_and_trains(search, datasets, tmp_path):
    root, _ = search
    out = root / "out"
    best = json.loads((out / "best.json").read_text())
    assert load_config(out / "best.yaml") == load_config(Path(best["run_dir"]) / "config.yaml")
    assert load_config(out / "best.yaml").training.lr == pytest.approx(best["params"]["training.lr"])
    intact, _ = datasets
    assert main(["train", "--config", str(out / "best.yaml"), "--output", str(tmp_path / "final"),
                 f"data.path={intact}"]) == 0
    assert json.loads((tmp_path / "final" / "metrics.json").read_text())["test"] is not None


def test_rerun_of_a_finished_search_trains_nothing(search, capsys):
    root, args = search
    assert main(args) == 0
    output = capsys.readouterr().out
    assert "trial " not in output.split("best:")[0] and "of 2 complete trials" in output
    assert sorted(p.name for p in (root / "out" / "trials").iterdir()) == ["trial-0000", "trial-0001"]


def test_confirm_retrains_the_best_trials_with_other_seeds_and_chooses_the_best_mean(search, capsys):
    root, args = search
    out = root / "out"
    seed_at = args.index("--seed")  # the seed list last, before the overrides, as users type it
    confirmed = [*args[:seed_at], *args[seed_at:seed_at + 2], "--confirm", "2", "--confirm-seeds", "5", "6",
                 *args[seed_at + 2:]]
    assert main(confirmed) == 0
    output = capsys.readouterr().out
    best = json.loads((out / "best.json").read_text())
    rows = best["confirmation"]["trials"]
    assert best["confirmation"]["seeds"] == [0, 5, 6] and len(rows) == 2
    for row in rows:  # the trial's own run, then one dev-only run per confirmation seed
        runs = [out / "confirm" / f"trial-{row['trial']:04d}" / f"seed-{seed}" for seed in (5, 6)]
        values = [json.loads((run / "metrics.json").read_text()) for run in runs]
        assert all(m["test"] is None for m in values)
        assert load_config(runs[0] / "config.yaml").training.seed == 5
        assert row["dev"][1:] == [m["dev"]["weighted_f1"] for m in values]
        assert row["mean"] == pytest.approx(sum(row["dev"]) / 3)
        assert f"confirm trial {row['trial']}, seed 6" in output
    chosen = max(rows, key=lambda r: r["mean"])
    assert best["best_trial"] == chosen["trial"] and best["mean"] == pytest.approx(chosen["mean"])
    assert load_config(out / "best.yaml") == load_config(out / "trials" / f"trial-{chosen['trial']:04d}" / "config.yaml")
    assert "--confirm 2 --confirm-seeds 5 6 --seed 3" in best["command"]
    assert f"chosen: trial {chosen['trial']}" in (out / "trials.md").read_text()
    stamp = (out / "confirm" / f"trial-{rows[0]['trial']:04d}" / "seed-5" / "metrics.json").stat().st_mtime_ns
    assert main(confirmed) == 0  # the finished confirmation runs are read back, not retrained
    assert "confirm trial" in capsys.readouterr().out
    assert (out / "confirm" / f"trial-{rows[0]['trial']:04d}" / "seed-5" / "metrics.json").stat().st_mtime_ns == stamp
    assert main(args) == 0  # without --confirm: the best single trial again
    assert "confirmation" not in json.loads((out / "best.json").read_text())


@pytest.mark.parametrize("bad,needle", [(["--confirm-seeds", "0"], "other than the trials' own"),
                                         (["--confirm", "-1"], "--confirm must be >= 0")])
def test_confirm_mistakes_are_one_line(search, capsys, bad, needle):
    _, args = search
    tail = args[args.index("--seed"):]
    head = args[:args.index("--seed")]
    extra = bad if bad[0] == "--confirm" else ["--confirm", "1", *bad]
    assert main([*head, *extra, "--seed", "3", *tail[2:]]) == 2
    error = capsys.readouterr().err.strip()
    assert needle in error and len(error.splitlines()) == 1


@pytest.mark.parametrize("change", ["space", "config"])
def test_other_space_or_config_for_the_study_is_refused(search, tmp_path, capsys, change):
    root, args = search
    args = list(args)
    if change == "space":
        (tmp_path / "space.yaml").write_text("training.lr: {low: 1.0e-4, high: 5.0e-3, log: true}\n")
        args[args.index("--space") + 1] = str(tmp_path / "space.yaml")
    else:
        args.append("training.weight_decay=0.01")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"another {change}" in err and "'out'" in err


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_interrupted_trials_are_failed_and_retried_once(tmp_path):
    import optuna

    from redifu.tune import _open_storage, _recover_interrupted

    storage = _open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    killed = study.ask()
    killed.suggest_float("training.lr", 1e-4, 1e-3, log=True)  # then the process dies: left RUNNING
    done = study.ask()
    done.suggest_float("training.lr", 1e-4, 1e-3, log=True)
    study.tell(done, 1.0)
    _recover_interrupted(study, storage, local=True)
    _recover_interrupted(study, storage, local=True)  # a second start retries nothing more
    trials = study.get_trials()
    states = [t.state.name for t in trials]
    assert states == ["FAIL", "COMPLETE", "WAITING"]
    assert trials[2].params == trials[0].params and trials[2].system_attrs["failed_trial"] == 0
    retry = study.ask()  # the queued values come first
    assert retry.number == 2 and retry.suggest_float("training.lr", 1e-4, 1e-3, log=True) == trials[0].params[
        "training.lr"]


@pytest.mark.parametrize("url,shown", [
    ("postgresql://user:secret@host/db", "postgresql://user:***@host/db"),
    ("mysql+pymysql://user@host/db", "mysql+pymysql://user@host/db"),
    ("sqlite:////tmp/study.db", "sqlite:////tmp/study.db"),
])
def test_storage_passwords_are_hidden(url, shown):
    from redifu.tune import redact

    assert redact(url) == shown


def _trials_in_state(database: Path, state: str = "COMPLETE") -> int:
    if not database.is_file():
        return 0
    try:
        with sqlite3.connect(database, timeout=5) as connection:
            return connection.execute("SELECT COUNT(*) FROM trials WHERE state = ?", (state,)).fetchone()[0]
    except sqlite3.OperationalError:  # the tables are not created yet
        return 0


@pytest.mark.integration
def test_killed_search_resumes_to_the_requested_trials(tmp_path):
    import optuna

    (tmp_path / "space.yaml").write_text(SPACE)
    output = tmp_path / "out"
    command = [sys.executable, "-m", "redifu", "tune", "--space", str(tmp_path / "space.yaml"), "--trials", "3",
               "--output", str(output), *TINY_DATA, *TINY_MODEL_OVERRIDES, *TINY_TRAINING, "training.max_epochs=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 300
    try:
        # killed while the second trial trains (its run directory has its config), after the first completed
        while not (output / "trials" / "trial-0001" / "config.yaml").is_file():
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "no trial completed in time"
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert not (output / "best.json").exists()
    killed_at = _trials_in_state(output / "study.db")
    running_at_kill = _trials_in_state(output / "study.db", "RUNNING")
    assert killed_at < 3

    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    study = optuna.load_study(study_name="out", storage=f"sqlite:///{output / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 3 and "RUNNING" not in states
    failed_trials = [t for t in study.trials if t.state.name == "FAIL"]
    assert running_at_kill == 1 and len(failed_trials) == 1
    for failed in failed_trials:  # killed mid-trial: retried with the same values
        retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == failed.number]
        assert len(retries) == 1 and retries[0].params == failed.params and retries[0].state.name == "COMPLETE"
        assert set(failed.params) == {"training.lr", "model.dropout", "model.window"}
    distinct = {json.dumps(t.params, sort_keys=True) for t in study.trials if t.state.name == "COMPLETE"}
    assert len(distinct) == 3  # the resumed run did not draw the first run's values again
    best = json.loads((output / "best.json").read_text())
    assert best["n_trials"] == 3 and best["value"] == study.best_value
    assert rerun.stdout.count("trial ") >= 3 - killed_at
