"""Portable checkpoints: a directory with ``config.json``, ``model.safetensors`` and ``labels.json``.

No pickle anywhere: the model is rebuilt from its JSON config and its weights are loaded
strictly from safetensors. ``run.json`` records what is needed to re-evaluate the run (the data
section of the experiment config, the evaluation batch size, the data fingerprint).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors.torch import load_file, save_file

from redifu.errors import CheckpointError, ConfigError
from redifu.files import atomic_directory, recover_directory, write_json_atomic
from redifu.model import ReDiFu, ReDiFuConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LABELS_FILE = "labels.json"
RUN_FILE = "run.json"

__all__ = ["Checkpoint", "CheckpointError", "load_checkpoint", "save_checkpoint", "write_json_atomic"]


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode), class names and run information."""

    model: ReDiFu
    classes: tuple[str, ...]
    run: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    directory: str | Path,
    model: ReDiFu,
    classes: Sequence[str],
    run: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``model`` to ``directory`` atomically (a complete directory or none at all)."""
    directory = Path(directory)
    with atomic_directory(directory) as staging:
        (staging / CONFIG_FILE).write_text(model.config.to_json() + "\n")
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt", "library": "redifu"})
        (staging / LABELS_FILE).write_text(json.dumps(list(classes), indent=2) + "\n")
        (staging / RUN_FILE).write_text(json.dumps(dict(run or {}), indent=2) + "\n")
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
    run = {}
    if (directory / RUN_FILE).is_file():
        run = json.loads((directory / RUN_FILE).read_text())
    model.to(map_location).eval()
    return Checkpoint(model=model, classes=classes, run=run)
