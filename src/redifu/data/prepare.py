"""Turning what users hold into redifu datasets: feature pickles (``convert``), official CSV
transcripts with sentence-encoder text features and, given the raw audio, openSMILE audio
features (``prepare``), and a summary (``info``)."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from redifu.data.dialogue import IGNORE_LABEL, DataError, DialogueCorpus
from redifu.data.store import is_stored_corpus, load_stored_corpus, read_manifest, save_corpus

log = logging.getLogger(__name__)

TRANSCRIPT_DATASETS = ("meld", "emorynlp")
ON_AUDIO_ERROR = ("fail", "skip-dialogue")


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
        **corpus.provenance,  # detected_layout; extractors as reported by the file's authors (verified: false)
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
    audio: str | Path | None = None,
    audio_set: str = "IS10_paraling",
    on_audio_error: str = "fail",
    audio_cache_dir: str | Path | None = None,
    audio_extractor: Any = None,
) -> tuple[DialogueCorpus, dict[str, Any]]:
    """Fetch (or read from ``source``) the official CSVs of ``name``, encode every utterance's
    text with a sentence encoder and, with ``audio``, describe every utterance's audio with
    openSMILE; write the redifu dataset to ``output`` (all of it or nothing).

    Args:
        audio: Folder of the raw audio. MELD: its clips as the official archives unpack them
            (``train_splits/``, ``dev_splits_complete/``, ``output_repeated_splits_test/`` holding
            ``dia{D}_utt{U}.mp4``; ``.wav``/``.flac`` copies are preferred). EmoryNLP: one file per
            Friends episode (``*s01e02*.mkv``...), cut at the CSVs' start/end times.
        audio_set: openSMILE functionals set, ``IS10_paraling`` (1582-d) or ``eGeMAPSv02`` (88-d).
        on_audio_error: ``"fail"``: the first missing, unreadable or too short audio file stops
            the run with a one-line error naming the file, split, dialogue and utterance.
            ``"skip-dialogue"``: the dialogue holding it is left out of the dataset, with a
            warning; the ids of the left-out dialogues are recorded in the manifest's provenance
            (``audio.skipped_dialogues``) and counted in the returned statistics.
        audio_cache_dir: Audio feature cache; default ``~/.cache/redifu/audio-features``.
        audio_extractor: An :class:`~redifu.features.audio.AudioFeatureExtractor` to use
            instead of building one (tests count its extractions).
    """
    from redifu.data.csv_corpora import MELD_SPEAKER_SLOTS, read_emorynlp_csvs, read_meld_csvs
    from redifu.data.download import fetch_dataset
    from redifu.features.text import DEFAULT_TEXT_ENCODER, TextEncoder

    if name not in TRANSCRIPT_DATASETS:
        raise DataError(f"dataset: unknown dataset {name!r}; known: {', '.join(TRANSCRIPT_DATASETS)}")
    if on_audio_error not in ON_AUDIO_ERROR:
        raise DataError(f"on_audio_error: must be one of {', '.join(ON_AUDIO_ERROR)}, got {on_audio_error!r}")
    started = time.perf_counter()
    if source is not None:
        directory = fetch_dataset(name, Path(source), source=Path(source))
    else:
        directory = fetch_dataset(name, Path(download_dir or default_download_dir(name)), base_url=base_url)
    transcripts = (read_meld_csvs if name == "meld" else read_emorynlp_csvs)(directory)
    num_speakers = MELD_SPEAKER_SLOTS if name == "meld" else max(transcripts.max_speakers, 1)
    extractors: dict[str, dict] = {}
    provenance: dict[str, Any] = {}
    features: dict[str, Any] = {}
    audio_stats: dict[str, Any] = {}
    if audio is not None:  # first: the slow part, and the one that decides which dialogues stay
        vectors, audio_provenance, audio_stats = _extract_transcript_audio(
            name, transcripts, Path(audio), audio_set=audio_set, on_error=on_audio_error,
            cache_dir=audio_cache_dir, extractor=audio_extractor, progress=progress)
        transcripts = transcripts.without({s: set(ids) for s, ids in audio_stats["skipped_dialogues"].items()})
        empty = [s for s, dialogues in transcripts.splits.items() if not dialogues]
        if empty:
            raise DataError(f"{audio}: every dialogue of split {empty[0]!r} was skipped for its audio")
        features["audio"] = lambda split, dialogues: np.stack(
            [vectors[(split, u.dialogue_id, u.index)] for d in dialogues for u in d])  # (U, D_audio)
        extractors["audio"] = audio_stats["extractor"]
        provenance["audio"] = audio_provenance
    text_encoder = TextEncoder(encoder or DEFAULT_TEXT_ENCODER, batch_size=batch_size, cache_dir=cache_dir,
                               progress=progress)
    encode_started = time.perf_counter()
    description = f"{name} official CSVs, text features from {text_encoder.model_name}"
    if audio is not None:
        description += f", audio features from openSMILE {audio_set}"
    corpus = transcripts.to_dialogue_corpus(text_encoder.encode, num_speakers=num_speakers,
                                            description=description, features=features)
    encode_seconds = time.perf_counter() - encode_started
    extractor = asdict(text_encoder.info)
    save_corpus(corpus, output, provenance={
        "source_files": dict(transcripts.source_files),
        "reader": f"redifu.data.csv_corpora.read_{name}_csvs",
        "repaired_utterances": transcripts.repaired,
        "extractors": {"text": extractor, **extractors},
        **provenance,
        "description": corpus.metadata.description,
    })
    stats = {"seconds": time.perf_counter() - started, "encode_seconds": encode_seconds,
             "repaired": transcripts.repaired, "extractor": extractor, "audio": audio_stats or None}
    return corpus, stats


def _extract_transcript_audio(
    name: str,
    transcripts: Any,
    directory: Path,
    *,
    audio_set: str,
    on_error: str,
    cache_dir: str | Path | None,
    extractor: Any,
    progress: bool,
) -> tuple[dict[tuple[str, str, int], np.ndarray], dict[str, Any], dict[str, Any]]:
    """openSMILE features of every utterance: ``(split, dialogue id, utterance id) -> (D,)``,
    the provenance to store, and statistics (seconds, extractions, skipped dialogues)."""
    from tqdm.auto import tqdm

    from redifu.data.csv_corpora import EpisodeAudio, MeldAudio
    from redifu.features.audio import AudioFeatureExtractor, audio_decoders

    started = time.perf_counter()
    locator = MeldAudio(directory) if name == "meld" else EpisodeAudio(directory)
    locator.check(list(transcripts.splits))  # a wrong folder fails whatever on_error says
    extractor = extractor or AudioFeatureExtractor(audio_set, cache_dir=cache_dir)
    info = asdict(extractor.info)  # fails early (one line naming the extra) without opensmile
    vectors: dict[tuple[str, str, int], np.ndarray] = {}
    skipped: dict[str, list[str]] = {split: [] for split in transcripts.splits}
    reasons: list[str] = []
    total = sum(transcripts.num_utterances(split) for split in transcripts.splits)
    suffixes: dict[str, int] = {}
    with tqdm(total=total, desc="audio", unit="utt", disable=not progress) as bar:
        for split, dialogues in transcripts.splits.items():
            for dialogue in dialogues:
                for position, utterance in enumerate(dialogue):
                    where = (f"{transcripts.name} {split} split: dialogue {utterance.dialogue_id}: "
                             f"utterance {utterance.index}: field 'audio'")
                    try:
                        found = locator.locate(split, utterance)
                        vector = extractor.extract_file(found.path, found.start, found.end)
                    except DataError as error:
                        message = f"{where}: {error}"
                        if on_error == "fail":
                            raise DataError(message) from None
                        log.warning("skipped dialogue %s of %s: %s", utterance.dialogue_id, split, message)
                        skipped[split].append(utterance.dialogue_id)
                        reasons.append(message)
                        bar.update(len(dialogue) - position)
                        break
                    suffix = found.path.suffix.lower()
                    suffixes[suffix] = suffixes.get(suffix, 0) + 1
                    vectors[(split, utterance.dialogue_id, utterance.index)] = vector
                    bar.update(1)
    count = sum(len(ids) for ids in skipped.values())
    if count:
        log.warning("%s: %d dialogue(s) left out for their audio (on_audio_error=skip-dialogue): %s",
                    transcripts.name, count, ", ".join(f"{s} {len(ids)}" for s, ids in skipped.items() if ids))
    provenance = {
        "source": str(directory.resolve()),
        "layout": locator.layout,
        "files_by_suffix": dict(sorted(suffixes.items())),
        "decoders": audio_decoders(),
        "on_audio_error": on_error,
        "skipped_dialogues": {s: ids for s, ids in skipped.items() if ids},
        "skip_reasons": reasons,
    }
    stats = {"seconds": time.perf_counter() - started, "extractions": extractor.extractions,
             "utterances": len(vectors), "skipped_dialogues": skipped, "extractor": info}
    return vectors, provenance, stats


def load_any(path: str | Path, **pickle_options: Any) -> tuple[DialogueCorpus, dict[str, Any]]:
    """A converted dataset directory or a feature pickle, with its provenance."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        if not is_stored_corpus(path):
            raise DataError(f"{path}: not a redifu dataset (manifest.json is missing)")
        return load_stored_corpus(path), read_manifest(path).get("provenance", {})
    corpus = read_pickle(path, **pickle_options)
    return corpus, {"source_file": str(path), **corpus.provenance}


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
        for key in ("source_file", "sha256", "layout", "detected_layout", "reader", "repaired_utterances"):
            if key in provenance:
                lines.append(f"{key}: {provenance[key]}")
        if "extractors" in provenance:
            for modality, extractor in provenance["extractors"].items():
                note = f", as reported by {extractor.get('reported_by')}; not verified" \
                    if extractor.get("verified") is False else ""
                lines.append(f"{modality} extractor: {extractor.get('name')} ({extractor.get('dimension')}-d{note})")
        if provenance.get("audio", {}).get("skipped_dialogues"):
            skipped = provenance["audio"]["skipped_dialogues"]
            lines.append("left out for their audio: " + ", ".join(f"{s} {len(ids)} dialogues" for s, ids in skipped.items()))
    return "\n".join(lines) + "\n"
