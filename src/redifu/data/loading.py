"""Turning a :class:`~redifu.config.DataConfig` (or a path) into a validated :class:`DialogueCorpus`."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from redifu.data.dialogue import SPLITS, DataError, DialogueCorpus
from redifu.data.feature_files import load_feature_file
from redifu.data.store import is_stored_corpus, load_stored_corpus, read_manifest

if TYPE_CHECKING:  # only for annotations: data/ does not depend on the config (or the model it builds)
    from redifu.config import DataConfig


def load_corpus(config: DataConfig, *, splits: Sequence[str] = SPLITS) -> DialogueCorpus:
    """Load (or generate) the dataset that ``config`` names, keep the requested modalities, validate.

    Only ``splits`` are kept (each must be non-empty). A dataset directory's other split files
    are never opened; a generated corpus or a feature pickle is read whole and the rest dropped.
    """
    if config.path is None:
        from redifu.data.synthetic import make_synthetic_corpus

        try:
            corpus = make_synthetic_corpus(config.preset, seed=config.seed, **dict(config.synthetic))
        except (KeyError, ValueError, TypeError) as error:
            message = error.args[0] if error.args else str(error)
            raise DataError(f"data.synthetic: {message}") from None
        source = f"synthetic:{config.preset}"
    else:
        corpus, source = _load_path(Path(config.path), config, splits), config.path
    if set(corpus.splits) != set(splits):
        corpus = replace(corpus, splits={s: d for s, d in corpus.splits.items() if s in splits})
    missing = [s for s in splits if not corpus.splits.get(s)]
    if missing:
        raise DataError(f"{source}: split {missing[0]!r} is empty or missing")
    if config.modalities is not None:
        corpus = select_modalities(corpus, config.modalities, source=source)
    corpus.validate(source)
    return corpus


def _load_path(path: Path, config: DataConfig, splits: Sequence[str]) -> DialogueCorpus:
    if not path.exists():
        raise DataError(f"data.path: {path}: no such file or directory")
    if path.is_dir():
        if is_stored_corpus(path):
            return load_stored_corpus(path, splits=splits)
        raise DataError(
            f"data.path: {path}: not a redifu dataset directory (manifest.json is missing); "
            "use `redifu data prepare` or `redifu data convert` first"
        )
    return load_feature_file(path, layout=config.layout, text_feature=config.text_feature,
                             dev_fraction=config.dev_fraction, dev_seed=config.dev_seed)


def load_any(path: str | Path, **pickle_options: Any) -> tuple[DialogueCorpus, dict[str, Any]]:
    """A dataset directory or a feature pickle (read with ``pickle_options``), with its provenance."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        if not is_stored_corpus(path):
            raise DataError(f"{path}: not a redifu dataset (manifest.json is missing)")
        return load_stored_corpus(path), read_manifest(path).get("provenance", {})
    corpus = load_feature_file(path, **pickle_options)
    return corpus, {"source_file": str(path), **corpus.provenance}


def select_modalities(corpus: DialogueCorpus, modalities: tuple[str, ...], *, source: str) -> DialogueCorpus:
    """A view of ``corpus`` with only ``modalities`` (text required)."""
    if "text" not in modalities:
        raise DataError(f"data.modalities: must include 'text', got {list(modalities)}")
    available = corpus.metadata.modality_dims
    for m in modalities:
        if m not in available:
            raise DataError(f"{source}: data.modalities: {m!r} not in this dataset ({list(available)})")
    dims = {m: d for m, d in available.items() if m in modalities}
    metadata = replace(corpus.metadata, modality_dims=dims)
    splits = {
        split: [replace(d, features={m: d.features[m] for m in dims}) for d in dialogues]
        for split, dialogues in corpus.splits.items()
    }
    return DialogueCorpus(metadata=metadata, splits=splits, provenance=corpus.provenance)


def fingerprint(corpus: DialogueCorpus) -> str:
    """SHA-256 over the metadata and every array of every split (traces results to their data)."""
    digest = hashlib.sha256()
    digest.update(repr(sorted(corpus.metadata.to_dict().items())).encode())
    for split in sorted(corpus.splits):
        for dialogue in corpus.splits[split]:
            digest.update(f"{split}/{dialogue.dialogue_id}".encode())
            digest.update(np.ascontiguousarray(dialogue.speakers, dtype=np.int64).tobytes())
            digest.update(np.ascontiguousarray(dialogue.labels, dtype=np.int64).tobytes())
            for m in sorted(dialogue.features):
                digest.update(np.ascontiguousarray(dialogue.features[m], dtype=np.float32).tobytes())
    return digest.hexdigest()

