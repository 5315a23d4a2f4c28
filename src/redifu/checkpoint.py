"""Portable checkpoints: a directory with ``config.json``, ``model.safetensors`` and ``labels.json``.

No pickle anywhere: the model is rebuilt from its JSON config and its weights are loaded
strictly from safetensors. ``run.json`` (:class:`RunInfo`, read here and nowhere else) records
what is needed to re-evaluate the run and to feed the model features like its training ones (the
data section of the experiment config, the evaluation batch size, the data fingerprint, the
modalities and their extractors) and where the model came from.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors.torch import load_file, save_file

from redifu.errors import CheckpointError, ConfigError
from redifu.files import atomic_directory, recover_directory
from redifu.model import ReDiFu, ReDiFuConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LABELS_FILE = "labels.json"
RUN_FILE = "run.json"

__all__ = ["Checkpoint", "CheckpointError", "RunInfo", "load_checkpoint", "save_checkpoint"]

DEFAULT_EVAL_BATCH_SIZE = 32


@dataclass(frozen=True)
class RunInfo:
    """What training records beside the model (``run.json``).

    Every field is optional, so that ``run.json`` files written by older versions, with fewer
    fields, still load; keys this version does not know are kept in ``extra`` and written back.

    Attributes:
        data: The experiment config's ``data`` section (the dataset to re-evaluate on).
        eval_batch_size: Dialogues per evaluation batch (default 32).
        data_fingerprint: :func:`redifu.data.loading.fingerprint` of the training data.
        modalities: The modalities the model takes.
        extractors: Per modality, the extractor that made the training features (``name``,
            ``version``, ``dimension``, ``settings``, optionally ``verified``/``reported_by``).
        seed: The training seed.
        redifu_version: The redifu version that trained the model.
        commit: The git commit of the redifu source tree, when it was a checkout.
        selected_epoch: The epoch selected on dev.
        dev_weighted_f1: Its dev weighted F1 (percent).
        extra: Other keys of ``run.json``, as read.
    """

    data: dict[str, Any] | None = None
    eval_batch_size: int = DEFAULT_EVAL_BATCH_SIZE
    data_fingerprint: str | None = None
    modalities: tuple[str, ...] | None = None
    extractors: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int | None = None
    redifu_version: str | None = None
    commit: str | None = None
    selected_epoch: int | None = None
    dev_weighted_f1: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = RUN_FILE) -> "RunInfo":
        """Read ``run.json``'s object; a field of the wrong type is a :class:`CheckpointError`
        naming ``source`` and the field."""
        if not isinstance(data, Mapping):
            raise CheckpointError(f"{source}: expected a JSON object, got {type(data).__name__}")

        def typed(key: str, kinds: tuple[type, ...], what: str) -> Any:
            value = data.get(key)
            if value is not None and (isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds)):
                raise CheckpointError(f"{source}: field {key!r}: must be {what}, got {value!r}")
            return value

        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        modalities = typed("modalities", (list, tuple), "a list of modality names")
        extractors = typed("extractors", (dict,), "an object of extractors per modality") or {}
        for modality, extractor in extractors.items():
            if not isinstance(extractor, Mapping):
                raise CheckpointError(f"{source}: field 'extractors': {modality!r} must be an object, got {extractor!r}")
        batch_size = typed("eval_batch_size", (int,), "a positive integer")
        if batch_size is not None and batch_size < 1:
            raise CheckpointError(f"{source}: field 'eval_batch_size': must be a positive integer, got {batch_size}")
        score = typed("dev_weighted_f1", (int, float), "a number")
        return cls(
            data=typed("data", (dict,), "an object (the config's data section)"),
            eval_batch_size=DEFAULT_EVAL_BATCH_SIZE if batch_size is None else batch_size,
            data_fingerprint=typed("data_fingerprint", (str,), "a string"),
            modalities=None if modalities is None else tuple(str(m) for m in modalities),
            extractors={str(m): dict(e) for m, e in extractors.items()},
            seed=typed("seed", (int,), "an integer"),
            redifu_version=typed("redifu_version", (str,), "a string"),
            commit=typed("commit", (str,), "a string"),
            selected_epoch=typed("selected_epoch", (int,), "an integer"),
            dev_weighted_f1=None if score is None else float(score),
            extra={k: v for k, v in data.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        """``run.json``'s object (the ``extra`` keys last)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        data["modalities"] = None if self.modalities is None else list(self.modalities)
        return {**data, **self.extra}


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode), class names and run information."""

    model: ReDiFu
    classes: tuple[str, ...]
    run: RunInfo = field(default_factory=RunInfo)


def save_checkpoint(
    directory: str | Path,
    model: ReDiFu,
    classes: Sequence[str],
    run: RunInfo | Mapping[str, Any] | None = None,
) -> Path:
    """Save ``model`` to ``directory`` atomically (a complete directory or none at all).

    ``run`` (a :class:`RunInfo`, or a mapping of its fields) becomes ``run.json``.
    """
    directory = Path(directory)
    if not isinstance(run, RunInfo):
        run = RunInfo.from_dict(run or {}, source="run")
    with atomic_directory(directory) as staging:
        (staging / CONFIG_FILE).write_text(model.config.to_json() + "\n")
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt", "library": "redifu"})
        (staging / LABELS_FILE).write_text(json.dumps(list(classes), indent=2) + "\n")
        (staging / RUN_FILE).write_text(json.dumps(run.to_dict(), indent=2) + "\n")
    return directory


def load_checkpoint(directory: str | Path, *, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model from ``config.json`` and load ``model.safetensors`` strictly."""
    directory = recover_directory(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE, LABELS_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory}: not a redifu checkpoint ({name} is missing)")
    try:
        config = ReDiFuConfig.from_dict(json.loads((directory / CONFIG_FILE).read_text()))
    except (json.JSONDecodeError, TypeError, ConfigError) as error:
        raise CheckpointError(f"{directory / CONFIG_FILE}: invalid model config ({error})") from None
    classes = tuple(json.loads((directory / LABELS_FILE).read_text()))
    if len(classes) != config.num_classes:
        raise CheckpointError(
            f"{directory / LABELS_FILE}: {len(classes)} labels but the model has {config.num_classes} classes"
        )
    model = ReDiFu(config)
    try:
        state = load_file(str(directory / WEIGHTS_FILE), device=str(map_location))
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: cannot read weights ({error})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: weights do not match config.json ({first})") from None
    run = RunInfo()
    if (directory / RUN_FILE).is_file():
        try:
            data = json.loads((directory / RUN_FILE).read_text())
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{directory / RUN_FILE}: invalid JSON ({error.msg} at line {error.lineno})") from None
        run = RunInfo.from_dict(data, source=str(directory / RUN_FILE))
    model.to(map_location).eval()
    return Checkpoint(model=model, classes=classes, run=run)
