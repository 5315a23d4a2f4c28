"""Hyper-parameter search (``redifu tune``): Optuna's TPE sampler over a space file, every trial an
ordinary dev-selected training run that never reads the test split.

Layout of a search directory::

    DIR/study.db                  the Optuna study (default storage; ``--storage URL`` instead)
    DIR/trials/trial-NNNN/        one training run per trial (config.yaml, checkpoint/, metrics.json)
    DIR/best.json                 best trial: number, dev weighted F1, params, counts, command
    DIR/best.yaml                 the base config with the best values: ``redifu train --config DIR/best.yaml``
    DIR/trials.md                 every finished trial: its values, dev weighted F1, selected epoch, seconds
    DIR/confirm/trial-NNNN/seed-S/  with ``--confirm K``: the K best trials retrained with other seeds (dev only)

A space file maps dotted config keys (the names ``key=value`` overrides use) to a search spec::

    training.lr: {low: 1.0e-4, high: 2.0e-3, log: true}   # float, log-uniform
    model.dropout: {low: 0.1, high: 0.5}                    # float, uniform
    model.graph_layers: {low: 1, high: 3, int: true}        # integer
    training.batch_size: {choices: [8, 16, 32]}             # categorical

The objective is the selected checkpoint's dev weighted F1. Rerunning the same command resumes
the study until ``trials`` trials are complete in total. Trials that were running when a search
was killed are failed and retried with the same parameters: with the default local storage at once
on the next start (so two commands must not share one DIR without ``--storage``), with a shared
``--storage`` by Optuna's heartbeat once they have been silent for ``GRACE_SECONDS``.

A dev split of a thousand utterances moves a single run's weighted F1 by the better part of a point
from one seed to the next, so the best of many single-seed trials is partly the luckiest seed.
``--confirm K`` retrains the K best trials with ``--confirm-seeds`` (dev only, like the trials) and
chooses, for best.json and best.yaml, the one with the best mean dev weighted F1 over all its seeds.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from redifu.config import (
    ExperimentConfig,
    _yaml_load,
    apply_overrides,
    build_config,
    parse_override,
    read_config_file,
    set_dotted,
)
from redifu.errors import ConfigError
from redifu.files import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

OBJECTIVE = "dev weighted F1"
HEARTBEAT_SECONDS = 60
"""How often a running trial records that it is alive (shared storages find dead workers by it)."""
GRACE_SECONDS = 300
"""A running trial silent for this long is failed (and retried) by the next worker that starts a trial."""
MAX_RETRIES = 3
"""How many times the parameters of an interrupted trial are retried."""

_SPEC_FIELDS = ("low", "high", "log", "int", "choices")
_SCALARS = (str, int, float, bool, type(None))


def import_optuna():
    """Optuna, or an ImportError in one line naming the extra to install."""
    try:
        import optuna
    except ImportError:
        raise ImportError('redifu tune needs optuna: pip install "redifu[tune]"') from None
    return optuna


@dataclass(frozen=True)
class Dimension:
    """One searched config key: a float or integer range, or a list of choices."""

    key: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)

    def examples(self) -> list[Any]:
        """Values of the kind the sampler gives, to check the key and its type against the config."""
        if self.choices is not None:
            return list(self.choices)
        kind = int if self.integer else float
        return [kind(self.low), kind(self.high)]

    def to_dict(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        spec: dict[str, Any] = {"low": self.low, "high": self.high, "log": self.log}
        if self.integer:
            spec["int"] = True
        return spec


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _dimension(where: str, key: str, spec: Any) -> Dimension:
    shape = "a mapping like {low: 1.0e-4, high: 1.0e-3, log: true}, {low: 1, high: 8, int: true} or {choices: [a, b]}"
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: {key}: expected {shape}, got {spec!r}")
    unknown = [f for f in spec if f not in _SPEC_FIELDS]
    if unknown:
        raise ConfigError(f"{where}: {key}: unknown field {unknown[0]!r}; expected low, high, log, int or choices")
    if "choices" in spec:
        if set(spec) != {"choices"}:
            raise ConfigError(f"{where}: {key}: give either choices or low/high, not both")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: {key}: choices must be a non-empty list, got {choices!r}")
        bad = [c for c in choices if not isinstance(c, _SCALARS)]
        if bad:
            raise ConfigError(f"{where}: {key}: choices must be single values (numbers, strings, true/false), "
                              f"got {bad[0]!r}")
        if len({json.dumps(c) for c in choices}) != len(choices):
            raise ConfigError(f"{where}: {key}: choices has duplicates: {choices!r}")
        return Dimension(key, choices=tuple(choices))
    for name in ("low", "high"):
        if name not in spec:
            raise ConfigError(f"{where}: {key}: missing {name!r} (or give choices)")
        if not _number(spec[name]):
            raise ConfigError(f"{where}: {key}: {name} must be a number, got {spec[name]!r}")
    for name in ("log", "int"):
        if not isinstance(spec.get(name, False), bool):
            raise ConfigError(f"{where}: {key}: {name} must be true or false, got {spec[name]!r}")
    low, high, log_scale, integer = spec["low"], spec["high"], spec.get("log", False), spec.get("int", False)
    if integer and not all(isinstance(v, int) for v in (low, high)):
        raise ConfigError(f"{where}: {key}: int: true needs integer low and high, got {low!r} and {high!r}")
    if not low < high:
        raise ConfigError(f"{where}: {key}: low must be < high, got low {low!r} and high {high!r}")
    if log_scale and low <= 0:
        raise ConfigError(f"{where}: {key}: log: true needs low > 0, got {low!r}")
    return Dimension(key, low=low if integer else float(low), high=high if integer else float(high),
                     log=log_scale, integer=integer)


def load_space(path: str | Path, base: Mapping[str, Any]) -> dict[str, Dimension]:
    """Read and check a space file against the raw base config ``base`` (file plus overrides).

    Every key must be a config key that takes every value of its spec (the config is built with
    each; a mistake is a one-line :class:`ConfigError` naming the space file and the key).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: space file not found") from None
    try:
        loaded = _yaml_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(loaded, Mapping) or not loaded:
        raise ConfigError(f"{path}: expected a mapping of config keys to search specs, e.g. "
                          "training.lr: {low: 1.0e-4, high: 1.0e-3, log: true}")
    space = {}
    for key, spec in loaded.items():
        key = str(key)
        try:
            parts, _ = parse_override(f"{key}=")
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None
        if key == "training.seed":
            raise ConfigError(f"{path}: training.seed: the seed is not a hyper-parameter (the best seed on dev is "
                              "luck); --confirm K retrains the best trials with other seeds instead")
        dimension = _dimension(str(path), key, spec)
        for value in dimension.examples():
            try:
                build_config(set_dotted(copy.deepcopy(dict(base)), parts, value))
            except ConfigError as error:
                message = str(error)
                raise ConfigError(f"{path}: {message}" if message.startswith(key) else f"{path}: {key}: {message}") \
                    from None
        space[key] = dimension
    return space


def apply_params(base: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of the raw config ``base`` with each dotted key of ``params`` set."""
    raw = copy.deepcopy(dict(base))
    for key, value in params.items():
        set_dotted(raw, key.split("."), value)
    return raw


def redact(url: str) -> str:
    """A storage URL without its password (for messages and best.json), as SQLAlchemy shows it."""
    return re.sub(r"^([\w+.-]+://[^:/@]*:)[^/]*@", r"\1***@", url)


def _first_difference(old: Any, new: Any, prefix: str = "") -> str:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
    return prefix or "(the whole value)"


def _jsonable(value: Any) -> Any:
    """As Optuna stores it (tuples become lists), so stored and new settings compare equal."""
    return json.loads(json.dumps(value))


@dataclass(frozen=True)
class TrialSummary:
    """What the search reports after each trial it ran."""

    number: int
    state: str  # COMPLETE or FAIL
    value: float | None
    params: dict[str, Any]
    seconds: float | None
    complete: int  # complete trials in the study so far (all workers, earlier runs)
    target: int
    error: str | None = None


def _retry(study, trial) -> None:
    """Queue the parameters of the failed (interrupted) ``trial`` again, as Optuna's
    RetryFailedTrialCallback does (whose name changed across Optuna releases)."""
    optuna = import_optuna()
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(history) > MAX_RETRIES:
        log.warning("trial %d: interrupted %d times; not retried again", trial.number, len(history))
        return
    system_attrs = {**trial.system_attrs, "failed_trial": history[0], "retry_history": history}
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ("interrupted", "run_dir")}
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs=user_attrs, system_attrs=system_attrs,
    ))
    log.warning("trial %d was interrupted; its parameters are queued again", trial.number)


def _open_storage(url: str):
    optuna = import_optuna()
    callback = ("heartbeat_stale_trial_callback"
                if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
                else "failed_trial_callback")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                                              **{callback: _retry})
        except Exception as error:  # SQLAlchemy's and the database drivers' errors
            first = (str(error).splitlines() or [type(error).__name__])[0]
            raise ConfigError(f"--storage {redact(url)}: cannot open ({first})") from None


def _recover_interrupted(study, storage, *, local: bool) -> None:
    """Fail the trials a killed search left RUNNING (``local``: nobody else uses this storage)
    and retry the interrupted ones (killed or stopped with Ctrl-C) not retried yet."""
    optuna = import_optuna()
    TrialState = optuna.trial.TrialState
    if local:
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            try:
                storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
                storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
    trials = study.get_trials(deepcopy=False)
    retried = {number for t in trials for number in t.system_attrs.get("retry_history", [])}
    for trial in trials:
        if trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted") and trial.number not in retried:
            _retry(study, trial)


def _refuse_other_settings(study, settings: dict[str, Any], *, where: str) -> None:
    stored = study.user_attrs
    for name in ("space", "config"):
        if name in stored and stored[name] != settings[name]:
            key = _first_difference(stored[name], settings[name])
            raise ConfigError(f"study {study.study_name!r} in {where} was started with another {name} "
                              f"(differs at {key}); rerun with the same --config/--space/overrides, or use "
                              "another --study or --output")
    for name, value in settings.items():
        if name not in stored:
            study.set_user_attr(name, value)


def run_search(
    *,
    space_path: str | Path,
    trials: int,
    output: str | Path,
    config_path: str | Path | None = None,
    overrides: Sequence[str] = (),
    storage: str | None = None,
    study_name: str | None = None,
    seed: int = 0,
    command: str | None = None,
    on_trial: Callable[[TrialSummary], None] | None = None,
    confirm: int = 0,
    confirm_seeds: Sequence[int] = (1, 2),
    on_confirm: Callable[[int, int, float], None] | None = None,
) -> dict[str, Any]:
    """Search until ``trials`` trials of the study are complete; write best.json and best.yaml.

    Args:
        space_path: The space file (see the module docstring).
        trials: Complete trials wanted in total (earlier runs and other workers count).
        output: The search directory.
        config_path: Base config file or shipped config name (``None``: the defaults).
        overrides: Base ``key=value`` overrides, applied before each trial's values.
        storage: An Optuna database URL (``None``: ``sqlite:///DIR/study.db``).
        study_name: The study's name in the storage (``None``: DIR's name).
        seed: Seed of the TPE sampler.
        command: The command line, recorded in best.json.
        on_trial: Called with a :class:`TrialSummary` after each trial this call runs.
        confirm: Retrain the ``confirm`` best trials with ``confirm_seeds`` and choose by the mean
            (0: the best single trial).
        confirm_seeds: The training seeds of the confirmation runs (not the base config's seed).
        on_confirm: Called with (trial number, seed, dev weighted F1) after each confirmation run.

    Returns:
        The content of best.json.
    """
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    if confirm < 0:
        raise ConfigError(f"--confirm must be >= 0, got {confirm}")
    optuna = import_optuna()
    from redifu.data.loading import load_corpus
    from redifu.training.run import train

    output = Path(output)
    base = apply_overrides(read_config_file(config_path) if config_path is not None else {}, overrides)
    base_config = build_config(base)
    if base_config.training.devices > 1:
        raise ConfigError("training.devices: redifu tune trains each trial in one process; use 1")
    space = load_space(space_path, base)
    confirm_seeds = list(dict.fromkeys(int(seed) for seed in confirm_seeds))
    if confirm and (not confirm_seeds or base_config.training.seed in confirm_seeds):
        raise ConfigError(f"--confirm-seeds: need seeds other than the trials' own (training.seed="
                          f"{base_config.training.seed}), got {confirm_seeds}")
    corpora: dict[str, Any] = {}

    def corpus_for(config: ExperimentConfig):
        key = json.dumps(config.to_dict()["data"], sort_keys=True)
        if key not in corpora:
            corpora.clear()  # one dataset in memory at a time
            corpora[key] = load_corpus(config.data, splits=("train", "dev"))
        return corpora[key]

    corpus_for(base_config)  # a data mistake surfaces before a study records anything

    output.mkdir(parents=True, exist_ok=True)
    local = storage is None
    url = storage or f"sqlite:///{(output / 'study.db').resolve()}"
    where = redact(url)
    rdb = _open_storage(url)
    name = study_name or output.resolve().name
    study = optuna.create_study(study_name=name, storage=rdb, direction="maximize", load_if_exists=True)
    # A resumed search must not draw the first run's points again: its sampler is seeded past them
    # (an uninterrupted search with the same seed is reproducible; a resumed one too, given where it stopped).
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.get_trials(deepcopy=False)))
    settings = _jsonable({"config": base_config.to_dict(), "space": {k: d.to_dict() for k, d in space.items()},
                          "overrides": list(overrides), "config_file": str(config_path) if config_path else None})
    _refuse_other_settings(study, settings, where=where)
    _recover_interrupted(study, rdb, local=local)
    TrialState = optuna.trial.TrialState

    def objective(trial) -> float:
        try:
            params = {key: dimension.suggest(trial) for key, dimension in space.items()}
            run_dir = output / "trials" / f"trial-{trial.number:04d}"
            trial.set_user_attr("run_dir", str(run_dir))
            try:
                config = build_config(apply_params(base, params))
            except ConfigError as error:  # a combination the model refuses (hidden_size vs num_heads, ...)
                trial.set_user_attr("error", str(error))
                raise
            if run_dir.exists():  # left by a study that was deleted and started again
                shutil.rmtree(run_dir)
            metrics = train(config, run_dir, corpus=corpus_for(config), evaluate_test=False)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        trial.set_user_attr("selected_epoch", metrics["selected_epoch"])
        return float(metrics["dev"]["weighted_f1"])

    failures = 0

    def report(study, trial) -> None:
        nonlocal failures
        complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if trial.state == TrialState.FAIL:
            failures += 1
            if failures >= max(10, trials):
                study.stop()
        if on_trial is not None:
            seconds = trial.duration.total_seconds() if trial.duration is not None else None
            on_trial(TrialSummary(number=trial.number, state=trial.state.name, value=trial.value,
                                  params=dict(trial.params), seconds=seconds, complete=complete, target=trials,
                                  error=trial.user_attrs.get("error")))

    def complete_count() -> int:
        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    if complete_count() < trials:
        study.optimize(objective, n_trials=None, catch=(ConfigError,), gc_after_trial=True, callbacks=[
            optuna.study.MaxTrialsCallback(trials, states=(TrialState.COMPLETE,)), report,
        ])
    if complete_count() < trials:
        raise ConfigError(f"{failures} trials failed (the last: {_last_error(study) or 'see -v'}); "
                          f"{complete_count()} of {trials} complete")
    confirmation = None
    if confirm:
        def run(params: Mapping[str, Any], run_dir: Path) -> float:
            config = build_config(apply_params(base, params))
            return float(train(config, run_dir, corpus=corpus_for(config), evaluate_test=False)["dev"]["weighted_f1"])

        confirmation = confirm_best(study, output=output, k=confirm, seeds=confirm_seeds,
                                    base_seed=base_config.training.seed, run=run, on_run=on_confirm)
    return write_best(study, base, output=output, storage=where, seed=seed, command=command,
                      confirmation=confirmation)


def confirm_best(study, *, output: Path, k: int, seeds: Sequence[int], base_seed: int,
                 run: Callable[[Mapping[str, Any], Path], float],
                 on_run: Callable[[int, int, float], None] | None = None) -> dict[str, Any]:
    """Retrain the ``k`` best complete trials with each of ``seeds`` into DIR/confirm/ and choose
    the trial with the best mean dev weighted F1 over its own run and these.

    A finished confirmation run (its metrics.json written) is read back instead of retrained, so a
    killed confirmation resumes; an unfinished one is discarded and run again.
    """
    optuna = import_optuna()
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    top = sorted(complete, key=lambda t: (-t.value, t.number))[:k]
    rows = []
    for trial in top:
        dev = [float(trial.value)]
        for seed in seeds:
            run_dir = output / "confirm" / f"trial-{trial.number:04d}" / f"seed-{seed}"
            metrics_path = run_dir / "metrics.json"
            if metrics_path.is_file():
                value = float(json.loads(metrics_path.read_text())["dev"]["weighted_f1"])
            else:
                if run_dir.exists():
                    shutil.rmtree(run_dir)
                value = run({**trial.params, "training.seed": seed}, run_dir)
            dev.append(value)
            if on_run is not None:
                on_run(trial.number, seed, value)
        rows.append({"trial": trial.number, "dev": dev, "mean": sum(dev) / len(dev)})
    chosen = max(rows, key=lambda row: row["mean"])  # the first (better single run) on a tie
    return {"seeds": [base_seed, *seeds], "trials": rows, "chosen": chosen["trial"]}


def _last_error(study) -> str | None:
    failed = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("error")]
    return failed[-1].user_attrs["error"] if failed else None


def write_best(study, base: Mapping[str, Any], *, output: Path, storage: str, seed: int,
               command: str | None, confirmation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write DIR/best.json, DIR/best.yaml (the base config with the best values) and DIR/trials.md
    atomically; with a ``confirmation`` (:func:`confirm_best`), "best" is the trial it chose."""
    optuna = import_optuna()
    TrialState = optuna.trial.TrialState
    best = study.trials[confirmation["chosen"]] if confirmation else study.best_trial
    counts = {state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,)))
              for state in (TrialState.COMPLETE, TrialState.FAIL)}
    summary = {
        "best_trial": best.number,
        "value": best.value,
        "objective": OBJECTIVE,
        "params": dict(best.params),
        "run_dir": best.user_attrs.get("run_dir"),
        "selected_epoch": best.user_attrs.get("selected_epoch"),
        "n_trials": counts["complete"],
        "n_failed": counts["fail"],
        "study": study.study_name,
        "storage": storage,
        "seed": seed,
        "command": command,
    }
    chosen_by = f"{OBJECTIVE} {best.value:.2f}"
    if confirmation:
        summary["confirmation"] = dict(confirmation)
        mean = next(row["mean"] for row in confirmation["trials"] if row["trial"] == best.number)
        summary["mean"] = mean
        chosen_by = f"mean {OBJECTIVE} {mean:.2f} over seeds {confirmation['seeds']}"
    header = (f"# redifu tune: the base config with the best values of study {study.study_name!r} "
              f"(trial {best.number}, {chosen_by}, {counts['complete']} trials)\n"
              f"#   redifu train --config {output / 'best.yaml'}\n")
    write_text_atomic(output / "best.yaml", header + yaml.safe_dump(apply_params(base, best.params), sort_keys=False))
    write_text_atomic(output / "trials.md", trials_table(study, command=command, confirmation=confirmation))
    write_json_atomic(output / "best.json", summary)
    return summary


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "—" if value is None else str(value)


def trials_table(study, *, command: str | None = None, confirmation: Mapping[str, Any] | None = None) -> str:
    """A Markdown table of the study's finished trials (complete and failed), best first, and
    the confirmation runs' table when there are some."""
    optuna = import_optuna()
    TrialState = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
    keys = sorted({key for trial in trials for key in trial.params})
    trials = sorted(trials, key=lambda t: (t.value is None, -(t.value or 0.0), t.number))
    lines = [f"# Study {study.study_name!r}: {len(trials)} finished trials, best {OBJECTIVE} first", ""]
    if command:
        lines += [f"`{command}`", ""]
    lines += ["| trial | " + " | ".join(keys) + f" | {OBJECTIVE} | selected epoch | seconds |",
              "|" + "---|" * (len(keys) + 4)]
    for trial in trials:
        value = "failed" if trial.value is None else f"{trial.value:.2f}"
        seconds = f"{trial.duration.total_seconds():.0f}" if trial.duration is not None else "—"
        cells = [str(trial.number), *(_cell(trial.params.get(key)) for key in keys), value,
                 _cell(trial.user_attrs.get("selected_epoch")), seconds]
        lines.append("| " + " | ".join(cells) + " |")
    if confirmation:
        seeds = confirmation["seeds"]
        lines += ["", f"Confirmation: the {len(confirmation['trials'])} best trials retrained with seeds {seeds[1:]} "
                  f"(the trials ran with seed {seeds[0]}); chosen: trial {confirmation['chosen']}", "",
                  "| trial | " + " | ".join(f"seed {s}" for s in seeds) + f" | mean {OBJECTIVE} |",
                  "|" + "---|" * (len(seeds) + 2)]
        for row in sorted(confirmation["trials"], key=lambda r: -r["mean"]):
            lines.append(f"| {row['trial']} | " + " | ".join(f"{v:.2f}" for v in row["dev"]) + f" | {row['mean']:.2f} |")
    return "\n".join(lines) + "\n"
