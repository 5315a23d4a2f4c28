"""Turning what users hold into redifu datasets: feature pickles (``convert``), official CSV
transcripts with sentence-encoder text features (``prepare``), and a summary (``info``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from redifu.data.dialogue import IGNORE_LABEL, DataError, DialogueCorpus
from redifu.data.store import is_stored_corpus, load_stored_corpus, read_manifest, save_corpus

log = logging.getLogger(__name__)

TRANSCRIPT_DATASETS = ("meld", "emorynlp")


def default_download_dir(name: str) -> Path:
    from redifu.features.info import redifu_cache_dir

    return redifu_cache_dir("datasets", name)


def convert_feature_file(
    path: str | Path,
    output: str | Path,
    *,
    layout: str | None = None,
    text_feature: str = "roberta1",
    dev_fraction: float = 0.1,
    dev_seed: int = 0,
) -> DialogueCorpus:
    """Read a standard feature pickle safely and write it in redifu's open format."""
    from redifu.data.feature_files import file_sha256

    path = Path(path)
    corpus = read_pickle(path, layout=layout, text_feature=text_feature, dev_fraction=dev_fraction, dev_seed=dev_seed)
    save_corpus(corpus, output, provenance={
        "source_file": str(path.resolve()),
        "sha256": file_sha256(path),
        "reader": "redifu.data.feature_files.read_feature_file",
        "layout": layout or "auto",
        "text_feature": text_feature,
        "dev": {"fraction": dev_fraction, "seed": dev_seed},
        "description": corpus.metadata.description,
    })
    return corpus


def read_pickle(path: Path, **options: Any) -> DialogueCorpus:
    """A feature pickle through the safe reader; bad options become a one-line DataError."""
    from redifu.data.feature_files import read_feature_file

    try:
        return read_feature_file(path, **options)
    except ValueError as error:
        if isinstance(error, DataError):
            raise
        raise DataError(str(error)) from None


def prepare_transcripts(
    name: str,
    output: str | Path,
    *,
    source: str | Path | None = None,
    download_dir: str | Path | None = None,
    base_url: str | None = None,
    encoder: str | None = None,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[DialogueCorpus, dict[str, Any]]:
    """Fetch (or read from ``source``) the official CSVs of ``name``, encode every utterance's
    text with a sentence encoder, and write a text-only redifu dataset to ``output``."""
    from redifu.data.csv_corpora import MELD_SPEAKER_SLOTS, read_emorynlp_csvs, read_meld_csvs
    from redifu.data.download import fetch_dataset
    from redifu.features.text import DEFAULT_TEXT_ENCODER, TextEncoder

    if name not in TRANSCRIPT_DATASETS:
        raise DataError(f"dataset: unknown dataset {name!r}; known: {', '.join(TRANSCRIPT_DATASETS)}")
    started = time.perf_counter()
    if source is not None:
        directory = fetch_dataset(name, Path(source), source=Path(source))
    else:
        directory = fetch_dataset(name, Path(download_dir or default_download_dir(name)), base_url=base_url)
    transcripts = (read_meld_csvs if name == "meld" else read_emorynlp_csvs)(directory)
    text_encoder = TextEncoder(encoder or DEFAULT_TEXT_ENCODER, batch_size=batch_size, cache_dir=cache_dir,
                               progress=progress)
    num_speakers = MELD_SPEAKER_SLOTS if name == "meld" else max(transcripts.max_speakers, 1)
    encode_started = time.perf_counter()
    corpus = transcripts.to_dialogue_corpus(
        text_encoder.encode, num_speakers=num_speakers,
        description=f"{name} official CSVs, text features from {text_encoder.model_name}",
    )
    encode_seconds = time.perf_counter() - encode_started
    info = text_encoder.info
    extractor = {"name": info.name, "version": info.version, "dimension": info.dimension,
                 "settings": dict(info.settings)}
    save_corpus(corpus, output, provenance={
        "source_files": dict(transcripts.source_files),
        "reader": f"redifu.data.csv_corpora.read_{name}_csvs",
        "repaired_utterances": transcripts.repaired,
        "extractors": {"text": extractor},
        "description": corpus.metadata.description,
    })
    stats = {"seconds": time.perf_counter() - started, "encode_seconds": encode_seconds,
             "repaired": transcripts.repaired, "extractor": extractor}
    return corpus, stats


def load_any(path: str | Path, **pickle_options: Any) -> tuple[DialogueCorpus, dict[str, Any]]:
    """A converted dataset directory or a feature pickle, with its provenance."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        if not is_stored_corpus(path):
            raise DataError(f"{path}: not a redifu dataset (manifest.json is missing)")
        return load_stored_corpus(path), read_manifest(path).get("provenance", {})
    return read_pickle(path, **pickle_options), {"source_file": str(path)}


def describe(corpus: DialogueCorpus, provenance: dict[str, Any] | None = None) -> str:
    """A plain-text summary: dialogues and utterances per split, labels, feature sizes."""
    meta = corpus.metadata
    splits = [s for s in ("train", "dev", "test") if s in corpus.splits]
    lines = [f"dataset: {meta.name}", f"description: {meta.description}" if meta.description else "",
             f"classes: {', '.join(meta.classes)}", f"speaker slots: {meta.num_speakers}",
             "features: " + ", ".join(f"{m} {d}" for m, d in meta.modality_dims.items()), ""]
    width = max(12, max(len(c) for c in meta.classes) + 2)
    lines.append(f"{'':<{width}}" + "".join(f"{s:>10}" for s in splits) + f"{'total':>10}")
    dialogues = [len(corpus.splits[s]) for s in splits]
    utterances = [corpus.num_utterances(s) for s in splits]
    lines.append(f"{'dialogues':<{width}}" + "".join(f"{v:>10d}" for v in dialogues) + f"{sum(dialogues):>10d}")
    lines.append(f"{'utterances':<{width}}" + "".join(f"{v:>10d}" for v in utterances) + f"{sum(utterances):>10d}")
    counts = {}
    for s in splits:
        labels = np.concatenate([d.labels for d in corpus.splits[s]])
        labels = labels[labels != IGNORE_LABEL]
        counts[s] = np.bincount(labels, minlength=meta.num_classes)
    for index, name in enumerate(meta.classes):
        row = [int(counts[s][index]) for s in splits]
        lines.append(f"{name:<{width}}" + "".join(f"{v:>10d}" for v in row) + f"{sum(row):>10d}")
    if provenance:
        lines.append("")
        for key in ("source_file", "sha256", "layout", "reader", "repaired_utterances"):
            if key in provenance:
                lines.append(f"{key}: {provenance[key]}")
        if "extractors" in provenance:
            for modality, extractor in provenance["extractors"].items():
                lines.append(f"{modality} extractor: {extractor.get('name')} ({extractor.get('dimension')}-d)")
    return "\n".join(lines) + "\n"
