"""Models shipped inside the package: ``Predictor.from_pretrained()`` and ``redifu predict``
without ``--checkpoint`` load one, offline.

A shipped model is an ordinary checkpoint directory (:mod:`redifu.checkpoint`) under this package,
with two additions: ``text-encoder/``, the fine-tuned text encoder its features came from
(bundled: LoRA factors over the pip-installed all-MiniLM-L6-v2, see
:mod:`redifu.features.finetuned_text`), and ``card.json`` + ``MODEL_CARD.md``, its model card
(data and licence, the command that reproduces it, dev and test metrics per class, intended use
and limits). :mod:`redifu.pretrained.build` assembles one from a training run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from redifu.errors import CheckpointError

__all__ = ["BUNDLED_ENCODER", "CARD_FILE", "DEFAULT_MODEL", "SHIPPED", "read_card", "resolve_model"]

DEFAULT_MODEL = "meld-text"
SHIPPED = ("meld-text",)
BUNDLED_ENCODER = "text-encoder"
CARD_FILE = "card.json"
_HERE = Path(__file__).resolve().parent


def resolve_model(name: str | Path | None) -> Path:
    """The checkpoint directory for ``name``: ``None`` (the default shipped model), a shipped
    model's name, or a path (returned as given)."""
    if name is None:
        name = DEFAULT_MODEL
    if isinstance(name, str) and name in SHIPPED and not Path(name).exists():
        directory = _HERE / name
        if not (directory / "model.safetensors").is_file():
            raise CheckpointError(f"shipped model {name!r}: not in this installation ({directory} is missing)")
        return directory
    return Path(name)


def read_card(directory: str | Path) -> dict[str, Any] | None:
    """The model card summary ``card.json`` of a checkpoint directory (``None`` where it has none)."""
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: invalid JSON ({error})") from None
    if not isinstance(card, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return card
