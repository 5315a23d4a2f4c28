"""Building redifu datasets from what users hold: the application pipelines behind
``redifu data prepare`` (download -> transcript reader -> text encoder -> openSMILE and faces -> store) and
``redifu data convert`` (feature pickle -> store).

Everything dataset-specific comes from the dataset's :mod:`redifu.data.registry` entry; the
formats (:mod:`redifu.data`) and the extractors (:mod:`redifu.features`) are used here, and do
not know each other.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from redifu.data import registry
from redifu.data.dialogue import DataError, DialogueCorpus
from redifu.data.download import fetch_dataset
from redifu.data.feature_files import load_feature_file
from redifu.data.store import save_corpus
from redifu.data.summary import describe
from redifu.features.info import redifu_cache_dir
from redifu.files import file_sha256

log = logging.getLogger(__name__)

__all__ = ["ON_AUDIO_ERROR", "ON_VIDEO_ERROR", "convert_feature_file", "default_download_dir", "describe",
           "prepare_transcripts"]

ON_AUDIO_ERROR = ("fail", "skip-dialogue")
ON_VIDEO_ERROR = ON_AUDIO_ERROR


def default_download_dir(name: str) -> Path:
    """Where downloads of dataset ``name`` go: ``~/.cache/redifu/datasets/NAME``."""
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
    path = Path(path)
    corpus = load_feature_file(path, layout=layout, text_feature=text_feature, dev_fraction=dev_fraction, dev_seed=dev_seed)
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
    text_encoder: Any = None,
    video: str | Path | None = None,
    on_video_error: str = "fail",
    visual_extractor: Any = None,
) -> tuple[DialogueCorpus, dict[str, Any]]:
    """Fetch (or read from ``source``) the official files of dataset ``name``, read them with its
    registry entry's reader, encode every utterance's text with a sentence encoder and, with
    ``audio``, describe every utterance's audio with openSMILE and, with ``video``, its speaker's
    face (:mod:`redifu.features.video`); write the redifu dataset to ``output`` (all of it or
    nothing).

    Args:
        name: A preparable :mod:`redifu.data.registry` entry (``meld``, ``emorynlp``, ...).
        source: Folder with the entry's files (checked against their pinned checksums), or one
            of those files itself (its folder is read; IEMOCAP: ``iemocap.pkl``).
        audio: Folder of the raw audio, as the entry's ``audio_locator`` reads it. MELD: its clips as the official archives unpack them
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
        encoder: The text extractor: a sentence-transformers model name or path, or an encoder
            directory written by ``redifu text finetune`` (each utterance is then read with its
            dialogue, as it was fine-tuned). Default: the packaged all-MiniLM-L6-v2.
        text_encoder: A :class:`~redifu.features.text.TextEncoder` (or any object with its
            ``encode`` or ``encode_dialogues``, ``info`` and ``model_name``) to use instead of
            building one from ``encoder``.
        video: Folder of the raw video, as the entry's ``video_locator`` reads it (MELD: the
            ``.mp4`` clips of ``audio``'s layout; EmoryNLP: one video file per episode).
        on_video_error: As ``on_audio_error``, for a missing or unreadable video file. An
            utterance whose video shows no face is not an error: its visual vector is the
            training split's mean visual vector (what the model's standardisation maps to
            zero), and it is recorded in the manifest's provenance (``visual.missing``: per
            split, ``"dialogue:utterance"`` ids) and counted in the statistics.
        visual_extractor: A :class:`~redifu.features.video.VisualFeatureExtractor` (its
            descriptor, sampling and cache); default one with the built-in ``hog-landmarks``
            descriptor.
    """
    entry = registry.get(name)
    if not entry.preparable:
        raise DataError(f"dataset: {name!r} has no transcript reader; preparable: "
                        f"{', '.join(registry.names(preparable=True))}")
    if on_audio_error not in ON_AUDIO_ERROR:
        raise DataError(f"on_audio_error: must be one of {', '.join(ON_AUDIO_ERROR)}, got {on_audio_error!r}")
    if audio is not None and entry.audio_locator is None:
        raise DataError(f"audio: dataset {name!r} has no audio layout (its registry entry has no audio_locator)")
    if on_video_error not in ON_VIDEO_ERROR:
        raise DataError(f"on_video_error: must be one of {', '.join(ON_VIDEO_ERROR)}, got {on_video_error!r}")
    if video is not None and entry.video_locator is None:
        raise DataError(f"video: dataset {name!r} has no video layout (its registry entry has no video_locator)")
    started = time.perf_counter()
    if source is not None:
        directory = _source_directory(entry, Path(source))
        if entry.files:  # checked against the pinned checksums (a mismatch is only logged)
            fetch_dataset(entry, directory, source=directory)
    elif not entry.files:
        raise DataError(f"dataset {name!r}: nothing to download; pass --source DIR with its files")
    else:
        directory = fetch_dataset(entry, Path(download_dir or default_download_dir(name)), base_url=base_url)
    transcripts = entry.read(directory)
    num_speakers = entry.speaker_slots or max(transcripts.max_speakers, 1)
    extractors: dict[str, dict] = {}
    provenance: dict[str, Any] = {}
    features: dict[str, Any] = {}
    audio_stats: dict[str, Any] = {}
    visual_stats: dict[str, Any] = {}
    if audio is not None:  # first: the slow part, and the one that decides which dialogues stay
        from redifu.features.audio import AudioFeatureExtractor, audio_decoders

        audio_extractor = audio_extractor or AudioFeatureExtractor(audio_set, cache_dir=audio_cache_dir)
        vectors, audio_provenance, audio_stats = _extract_transcript_media(
            "audio", entry.audio_locator, transcripts, Path(audio), on_error=on_audio_error,
            extractor=audio_extractor, decoders=audio_decoders(), progress=progress)
        transcripts = transcripts.without({s: set(ids) for s, ids in audio_stats["skipped_dialogues"].items()})
        empty = [s for s, dialogues in transcripts.splits.items() if not dialogues]
        if empty:
            raise DataError(f"{audio}: every dialogue of split {empty[0]!r} was skipped for its audio")
        features["audio"] = lambda split, dialogues, vectors=vectors: np.stack(
            [vectors[(split, u.dialogue_id, u.index)] for d in dialogues for u in d])  # (U, D_audio)
        extractors["audio"] = audio_stats["extractor"]
        provenance["audio"] = audio_provenance
    if video is not None:
        from redifu.features.video import VisualFeatureExtractor, video_decoders

        visual_extractor = visual_extractor or VisualFeatureExtractor()
        seen, visual_provenance, visual_stats = _extract_transcript_media(
            "visual", entry.video_locator, transcripts, Path(video), on_error=on_video_error,
            extractor=visual_extractor, decoders=video_decoders(), progress=progress)
        transcripts = transcripts.without({s: set(ids) for s, ids in visual_stats["skipped_dialogues"].items()})
        empty = [s for s, dialogues in transcripts.splits.items() if not dialogues]
        if empty:
            raise DataError(f"{video}: every dialogue of split {empty[0]!r} was skipped for its video")
        visual, missing = _fill_missing_faces(transcripts, seen, source=Path(video))
        visual_provenance["missing"] = missing
        visual_stats["missing"] = {s: len(ids) for s, ids in missing.items()}
        features["visual"] = lambda split, dialogues, vectors=visual: np.stack(
            [vectors[(split, u.dialogue_id, u.index)] for d in dialogues for u in d])  # (U, D_visual)
        extractors["visual"] = visual_stats["extractor"]
        provenance["visual"] = visual_provenance
    from redifu.features.text import encode_dialogues

    if text_encoder is None:
        from redifu.features.finetuned_text import load_text_encoder

        text_encoder = load_text_encoder(encoder, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
    encode_started = time.perf_counter()
    transcript_files = ", ".join(dict.fromkeys(entry.split_files.values()))
    description = f"{name} transcripts ({transcript_files}), text features from {text_encoder.model_name}"
    if audio is not None:
        description += f", audio features from openSMILE {audio_set}"
    if video is not None:
        description += f", visual features from {extractors['visual']['name']} descriptors of MTCNN faces"
    corpus = transcripts.to_dialogue_corpus(lambda dialogues: encode_dialogues(text_encoder, dialogues),
                                            num_speakers=num_speakers,
                                            description=description, features=features)
    encode_seconds = time.perf_counter() - encode_started
    extractor = asdict(text_encoder.info)
    save_corpus(corpus, output, provenance={
        "source_files": dict(transcripts.source_files),
        "reader": entry.reader_name,
        "repaired_utterances": transcripts.repaired,
        "extractors": {"text": extractor, **extractors},
        **provenance,
        "description": corpus.metadata.description,
    })
    stats = {"seconds": time.perf_counter() - started, "encode_seconds": encode_seconds,
             "repaired": transcripts.repaired, "extractor": extractor, "audio": audio_stats or None,
             "visual": visual_stats or None}
    return corpus, stats


def _source_directory(entry: registry.DatasetEntry, source: Path) -> Path:
    """The folder of ``--source``: the path itself, or the folder of one of the entry's files."""
    if not source.is_file():
        return source
    expected = list(dict.fromkeys([*entry.files, *entry.split_files.values()]))
    if source.name not in expected:
        raise DataError(f"source {source}: a file of dataset {entry.name!r} is named "
                        f"{' or '.join(expected)}; pass that file or the folder holding it")
    return source.parent


def _extract_transcript_media(
    modality: str,
    locator_factory: Any,
    transcripts: Any,
    directory: Path,
    *,
    on_error: str,
    extractor: Any,
    decoders: dict[str, str],
    progress: bool,
) -> tuple[dict[tuple[str, str, int], np.ndarray | None], dict[str, Any], dict[str, Any]]:
    """Every utterance's ``modality`` features (``audio``: openSMILE; ``visual``: pooled faces,
    ``None`` where no face was found): ``(split, dialogue id, utterance id) -> (D,)``, the
    provenance to store, and statistics (seconds, extractions, skipped dialogues)."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    media = "audio" if modality == "audio" else "video"
    locator = locator_factory(directory)
    locator.check(list(transcripts.splits))  # a wrong folder fails whatever on_error says
    info = asdict(extractor.info)  # fails early (one line naming the extra) without the extractor's packages
    vectors: dict[tuple[str, str, int], np.ndarray | None] = {}
    skipped: dict[str, list[str]] = {split: [] for split in transcripts.splits}
    reasons: list[str] = []
    total = sum(transcripts.num_utterances(split) for split in transcripts.splits)
    suffixes: dict[str, int] = {}
    with tqdm(total=total, desc=media, unit="utt", disable=not progress) as bar:
        for split, dialogues in transcripts.splits.items():
            for dialogue in dialogues:
                for position, utterance in enumerate(dialogue):
                    where = (f"{transcripts.name} {split} split: dialogue {utterance.dialogue_id}: "
                             f"utterance {utterance.index}: field '{media}'")
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
        log.warning("%s: %d dialogue(s) left out for their %s (on_%s_error=skip-dialogue): %s", transcripts.name,
                    count, media, media, ", ".join(f"{s} {len(ids)}" for s, ids in skipped.items() if ids))
    provenance = {
        "source": str(directory.resolve()),
        "layout": locator.layout,
        "files_by_suffix": dict(sorted(suffixes.items())),
        "decoders": decoders,
        f"on_{media}_error": on_error,
        "skipped_dialogues": {s: ids for s, ids in skipped.items() if ids},
        "skip_reasons": reasons,
    }
    stats = {"seconds": time.perf_counter() - started, "extractions": extractor.extractions,
             "utterances": len(vectors), "skipped_dialogues": skipped, "extractor": info}
    return vectors, provenance, stats


def _fill_missing_faces(transcripts: Any, vectors: dict[tuple[str, str, int], np.ndarray | None], *,
                        source: Path) -> tuple[dict[tuple[str, str, int], np.ndarray], dict[str, list[str]]]:
    """Utterances without a face get the mean visual vector of the training utterances with one
    (so the training mean, which the model standardises with, stays that mean); returns the
    filled vectors and, per split, the ``"dialogue:utterance"`` ids that were filled."""
    kept = {(split, u.dialogue_id, u.index) for split, dialogues in transcripts.splits.items()
            for d in dialogues for u in d}
    train = [v for key, v in vectors.items() if key[0] == "train" and key in kept and v is not None]
    if not train:
        raise DataError(f"{source}: no face found in any utterance of the training split; the visual features "
                        f"would all be missing (check the video folder, or prepare without --video)")
    mean = np.mean(np.stack(train), axis=0).astype(np.float32)  # (D,)
    filled: dict[tuple[str, str, int], np.ndarray] = {}
    missing: dict[str, list[str]] = {split: [] for split in transcripts.splits}
    for key, vector in vectors.items():
        if key not in kept:
            continue
        if vector is None:
            missing[key[0]].append(f"{key[1]}:{key[2]}")
            vector = mean
        filled[key] = vector
    count = sum(len(ids) for ids in missing.values())
    if count:
        log.warning("%s: no face found in %d of %d utterances; their visual vector is the training mean",
                    transcripts.name, count, len(filled))
    return filled, missing
