"""``redifu features extract``: precompute per-utterance features for ``redifu predict``.

Input and output are utterance rows in the one schema of :mod:`redifu.predict.rows` (JSON Lines
or CSV; ``dialogue_id``, ``utterance``, ``speaker``, ``text``, ``audio_path`` with optional
``start``/``end``, precomputed ``<modality>`` / ``<modality>_npy`` vectors, other columns kept).
Audio is read from ``audio_path`` (WAV/FLAC, or any container FFmpeg reads, such as MELD's
``.mp4`` clips, through PyAV): either one file per utterance, or one file per dialogue with
``start``/``end`` (seconds or MELD's ``HH:MM:SS,mmm``) selecting the utterance. Video is read
from ``video_path`` the same way (faces detected, tracked, described and pooled by
:mod:`redifu.features.video`); an utterance where no face is found gets no ``visual_npy`` but a
``visual_missing`` column (``"no face found"``), which ``redifu predict`` replaces with the
model's training mean, and is counted in the returned statistics.

Output: the same rows, dialogue by dialogue in utterance order, in the format of OUT's suffix,
with a ``<modality>_npy`` column per extracted modality pointing (relative to OUT's folder) at
``OUT_features/<dialogue>_<utt>_<modality>.npy`` (one ``float32`` vector each), and a
``<modality>_extractor`` column naming the extractor (``IS10_paraling``, ``eGeMAPSv02``, the text
model, the face descriptor), which ``redifu predict`` compares with the checkpoint's recorded extractor, so that
``redifu predict OUT`` reads them directly. Paths given in the input (``audio_path``, other
``.npy`` files) are rewritten relative to OUT's folder; inline vectors of the input are saved
beside the extracted ones. Every file is written atomically and OUT last, so a failed run leaves
no OUT.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from redifu.errors import DataError
from redifu.files import atomic_file
from redifu.predict.rows import (
    AUDIO_PATH_COLUMN,
    VIDEO_PATH_COLUMN,
    ROW_FORMATS,
    InputUtterance,
    RowWriter,
    read_conversations,
    utterance_row,
)

logger = logging.getLogger(__name__)

__all__ = ["EXTRACT_MODALITIES", "extract_features", "features_dir"]

EXTRACT_MODALITIES = ("text", "audio", "visual")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def features_dir(output: Path) -> Path:
    """``OUT_features`` next to OUT (``out.jsonl`` -> ``out_features/``)."""
    return output.with_name(f"{output.stem}_features")


def _save_npy(path: Path, vector: np.ndarray) -> None:
    with atomic_file(path, "wb") as stream:
        np.save(stream, np.asarray(vector, dtype=np.float32), allow_pickle=False)


def extract_features(
    input_path: str | Path,
    output: str | Path,
    *,
    modalities: Sequence[str] = ("audio",),
    audio_set: str = "IS10_paraling",
    text_encoder: str | None = None,
    cache_dir: str | Path | None = None,
    audio_extractor: Any = None,
    visual_extractor: Any = None,
    visual_descriptor: Any = None,
    video_fps: float = 3.0,
) -> dict[str, Any]:
    """Extract features for every row of ``input_path`` and write ``output`` (see module doc).

    Args:
        input_path: JSON Lines or CSV utterance rows.
        output: ``.jsonl`` or ``.csv`` file to write; features go to :func:`features_dir`.
        modalities: Any of ``text`` and ``audio``. Default: ``("audio",)`` (``predict`` encodes
            the text itself with the checkpoint's encoder).
        audio_set: openSMILE feature set (``IS10_paraling`` or ``eGeMAPSv02``).
        text_encoder: sentence-transformers model for ``text``; default the packaged MiniLM.
        cache_dir: Cache root for the extractors (``<cache_dir>/audio-features``,
            ``<cache_dir>/text-features``); default their own defaults.
        audio_extractor: An :class:`~redifu.features.audio.AudioFeatureExtractor` to use instead
            of building one (tests count its extractions).
        visual_extractor: A :class:`~redifu.features.video.VisualFeatureExtractor` to use
            instead of building one from ``visual_descriptor`` and ``video_fps``.
        visual_descriptor: The face descriptor for ``visual``
            (:class:`~redifu.features.descriptors.FaceDescriptor`); default the built-in
            ``hog-landmarks``.
        video_fps: Frames sampled per second of each utterance.

    Returns:
        Statistics: ``rows``, ``dimensions`` per modality, ``extractors`` (name, version,
        dimension, settings per modality), ``missing`` (per modality, utterances without
        features: visual ones where no face was found), ``features_dir``.

    Raises:
        DataError: a malformed row or an input without rows (one line naming file, line,
            dialogue and field).
    """
    input_path, output = Path(input_path), Path(output)
    modalities = list(dict.fromkeys(modalities))
    unknown = [m for m in modalities if m not in EXTRACT_MODALITIES]
    if unknown or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of {EXTRACT_MODALITIES}, got {list(modalities)}")
    if output.suffix.lower() not in ROW_FORMATS:
        raise ValueError(f"output {output}: unknown format {output.suffix!r}; use .jsonl or .csv")
    if output.resolve() == input_path.resolve():
        raise ValueError(f"output {output}: would overwrite the input file")
    conversations = [list(dialogue) for dialogue in read_conversations(input_path)]
    utterances: list[InputUtterance] = [u for dialogue in conversations for u in dialogue]

    folder = features_dir(output)
    names: list[str] = []
    for utterance in utterances:
        where = f"{input_path}:{utterance.line}: dialogue {utterance.dialogue_id!r}"
        for modality in modalities:
            if modality in utterance.features:
                raise DataError(f"{where}: field {modality!r}: the row already gives {modality} features; "
                                f"leave {modality} out of --modalities or drop the vector")
        if "text" in modalities and utterance.text is None:
            raise DataError(f"{where}: field 'text': missing (the transcript, needed for --modalities text)")
        if "audio" in modalities and utterance.audio is None:
            raise DataError(f"{where}: field {AUDIO_PATH_COLUMN!r}: missing (the utterance's audio file, "
                            f"needed for --modalities audio)")
        if "visual" in modalities and utterance.video is None:
            raise DataError(f"{where}: field {VIDEO_PATH_COLUMN!r}: missing (the utterance's video file, "
                            f"needed for --modalities visual)")
        names.append(f"{_UNSAFE.sub('_', utterance.dialogue_id)}_{utterance.index}")
    seen: dict[str, InputUtterance] = {}
    for name, utterance in zip(names, utterances):
        if name in seen:  # distinct ids that differ only in characters a file name cannot hold
            raise DataError(f"{input_path}:{utterance.line}: dialogue {utterance.dialogue_id!r}: field "
                            f"'dialogue_id': its feature files would be those of dialogue "
                            f"{seen[name].dialogue_id!r} (line {seen[name].line}); rename one")
        seen[name] = utterance

    vectors: dict[str, list[np.ndarray]] = {}
    extractors: dict[str, dict] = {}
    if "text" in modalities:
        from redifu.features.finetuned_text import load_text_encoder

        encoder = load_text_encoder(text_encoder, progress=False,
                                    cache_dir=Path(cache_dir) / "text-features" if cache_dir else None)
        # whole dialogues: a fine-tuned encoder reads each utterance with its context
        vectors["text"] = list(encoder.encode_dialogues([[(u.speaker, u.text) for u in d] for d in conversations]))
        extractors["text"] = asdict(encoder.info)
    if "audio" in modalities:
        from redifu.features.audio import AudioFeatureExtractor

        extractor = audio_extractor or AudioFeatureExtractor(
            audio_set, cache_dir=Path(cache_dir) / "audio-features" if cache_dir else None)
        audio = []
        for utterance in utterances:
            clip = utterance.audio
            try:
                audio.append(extractor.extract_file(clip.path, clip.start, clip.end))
            except DataError as error:
                raise DataError(f"{input_path}:{utterance.line}: dialogue {utterance.dialogue_id!r}: "
                                f"field {AUDIO_PATH_COLUMN!r}: {error}") from None
        vectors["audio"] = audio
        extractors["audio"] = asdict(extractor.info)
    missing: dict[str, int] = {}
    if "visual" in modalities:
        from redifu.features.video import VisualFeatureExtractor

        extractor = visual_extractor or VisualFeatureExtractor(
            visual_descriptor, fps=video_fps, cache_dir=Path(cache_dir) / "visual-features" if cache_dir else None)
        visual = []
        for utterance in utterances:
            clip = utterance.video
            try:
                visual.append(extractor.extract_file(clip.path, clip.start, clip.end))
            except DataError as error:
                raise DataError(f"{input_path}:{utterance.line}: dialogue {utterance.dialogue_id!r}: "
                                f"field {VIDEO_PATH_COLUMN!r}: {error}") from None
        vectors["visual"] = visual
        extractors["visual"] = asdict(extractor.info)
        missing["visual"] = sum(v is None for v in visual)
        if missing["visual"]:
            logger.warning("features extract: no face found in %d of %d utterances (written as visual_missing)",
                           missing["visual"], len(visual))

    # Only now, with every feature computed, is anything written: a failed extraction leaves nothing.
    rows = []
    for position, (utterance, name) in enumerate(zip(utterances, names)):
        made = {m: vectors[m][position] for m in modalities}
        absent = {m: "no face found" for m, vector in made.items() if vector is None}
        features = {**utterance.features, **{m: v for m, v in made.items() if v is not None}}
        saved = {}
        for modality, vector in features.items():
            if modality not in utterance.sources or modality in modalities:
                saved[modality] = folder / f"{name}_{modality}.npy"
                _save_npy(saved[modality], vector)
        declared = {**utterance.extractors, **{m: extractors[m]["name"] for m in modalities if m not in absent}}
        rows.append(utterance_row(replace(utterance, features=features, extractors=declared,
                                          missing={**utterance.missing, **absent}), output.parent, npy_paths=saved))
    columns = list(dict.fromkeys(column for row in rows for column in row))
    with RowWriter(output, columns) as writer:
        for row in rows:
            writer.write(row)
    dimensions = {m: int(extractors[m]["dimension"]) for m in modalities}
    logger.info("features extract: %d rows, %s -> %s", len(rows), dimensions, output)
    return {"rows": len(rows), "dimensions": dimensions, "extractors": extractors, "missing": missing,
            "features_dir": str(folder)}
