"""``redifu features extract``: precompute per-utterance features for ``redifu predict``.

Input: JSON Lines or CSV, one utterance per row with ``dialogue_id``, ``utterance``,
``speaker``, ``text`` and, for audio, ``audio`` = path of an audio file (WAV/FLAC, or any
container FFmpeg reads, such as MELD's ``.mp4`` clips, through PyAV; relative paths are resolved
against the input file's folder): either one file per utterance, or one file per dialogue with
``start``/``end`` (seconds or MELD's ``HH:MM:SS,mmm``) selecting the utterance.

Output: the same rows, in the format of OUT's suffix, with a ``<modality>_npy`` column per
extracted modality pointing (relative to OUT's folder) at ``OUT_features/<dialogue>_<utt>_<modality>.npy``
(one ``float32`` vector each), and a ``<modality>_extractor`` column naming the extractor
(``IS10_paraling``, ``eGeMAPSv02``, the text model), which ``redifu predict`` compares with the
checkpoint's recorded extractor, so that ``redifu predict OUT`` reads them directly. The ``audio``
column is renamed ``audio_path`` (``predict`` reads ``audio`` as an inline vector). Every file is
written to a temporary file and renamed; OUT is written last, so a failed run leaves no OUT.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from redifu.data.dialogue import DataError

logger = logging.getLogger(__name__)

__all__ = ["EXTRACT_MODALITIES", "extract_features", "features_dir"]

EXTRACT_MODALITIES = ("text", "audio")
_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
_REQUIRED = ("dialogue_id", "utterance", "speaker")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def features_dir(output: Path) -> Path:
    """``OUT_features`` next to OUT (``out.jsonl`` -> ``out_features/``)."""
    return output.with_name(f"{output.stem}_features")


def _read_rows(path: Path) -> list[tuple[int, dict]]:
    """``(line, row)`` pairs of a JSON Lines or CSV file."""
    kind = _FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unknown input format {path.suffix!r}; use one of {', '.join(_FORMATS)}")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows: list[tuple[int, dict]] = []
    if kind == "jsonl":
        with path.open(encoding="utf-8-sig") as stream:
            for line, raw in enumerate(stream, start=1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}:{line}: row: invalid JSON ({error.msg} at column {error.colno})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{line}: row: expected a JSON object, got {type(row).__name__}")
                rows.append((line, row))
        return rows
    with path.open(encoding="utf-8-sig", newline="") as stream:
        reader = csv.DictReader(stream)
        try:
            for row in reader:
                rows.append((reader.line_num, {k: v for k, v in row.items() if k is not None and v not in (None, "")}))
        except (csv.Error, UnicodeDecodeError) as error:
            raise DataError(f"{path}:{reader.line_num}: row: cannot read the CSV row ({error})") from None
    return rows


def _atomic_save_npy(path: Path, vector: np.ndarray) -> None:
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    temporary = Path(handle.name)
    try:
        os.chmod(temporary, 0o644)
        with handle:
            np.save(handle, np.asarray(vector, dtype=np.float32), allow_pickle=False)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _write_rows(path: Path, rows: list[dict]) -> None:
    kind = _FORMATS.get(path.suffix.lower())
    handle = tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                         delete=False, encoding="utf-8", newline="")
    temporary = Path(handle.name)
    try:
        os.chmod(temporary, 0o644)
        with handle:
            if kind == "jsonl":
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            else:
                columns: dict[str, None] = {}
                for row in rows:
                    columns.update(dict.fromkeys(row))
                writer = csv.DictWriter(handle, fieldnames=list(columns))
                writer.writeheader()
                writer.writerows(rows)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def extract_features(
    input_path: str | Path,
    output: str | Path,
    *,
    modalities: Sequence[str] = ("audio",),
    audio_set: str = "IS10_paraling",
    text_encoder: str | None = None,
    cache_dir: str | Path | None = None,
    audio_extractor: Any = None,
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

    Returns:
        Statistics: ``rows``, ``dimensions`` per modality, ``extractors`` (name, version,
        dimension, settings per modality), ``features_dir``.
    """
    input_path, output = Path(input_path), Path(output)
    modalities = list(dict.fromkeys(modalities))
    unknown = [m for m in modalities if m not in EXTRACT_MODALITIES]
    if unknown or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of {EXTRACT_MODALITIES}, got {list(modalities)}")
    if _FORMATS.get(output.suffix.lower()) is None or output.suffix.lower() == ".ndjson":
        raise ValueError(f"output {output}: unknown format {output.suffix!r}; use .jsonl or .csv")
    if output.resolve() == input_path.resolve():
        raise ValueError(f"output {output}: would overwrite the input file")
    rows = _read_rows(input_path)
    if not rows:
        raise DataError(f"{input_path}: no rows")

    folder = features_dir(output)
    names: list[str] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        where = f"{input_path}:{line}: dialogue {row.get('dialogue_id')!r}"
        for name in _REQUIRED:
            if row.get(name) in (None, ""):
                raise DataError(f"{where}: field {name!r}: missing")
        if "text" in modalities and not isinstance(row.get("text"), str):
            raise DataError(f"{where}: field 'text': missing (needed for --modalities text)")
        if "audio" in modalities and not isinstance(row.get("audio"), str):
            raise DataError(f"{where}: field 'audio': missing (path of the utterance's audio file)")
        name = f"{_UNSAFE.sub('_', str(row['dialogue_id']))}_{_UNSAFE.sub('_', str(row['utterance']))}"
        if name in seen:
            raise DataError(f"{where}: field 'utterance': {row['utterance']!r} appears twice "
                            f"(also on line {seen[name]})")
        seen[name] = line
        names.append(name)

    vectors: dict[str, list[np.ndarray]] = {}
    extractors: dict[str, dict] = {}
    if "text" in modalities:
        from redifu.features.text import DEFAULT_TEXT_ENCODER, TextEncoder

        encoder = TextEncoder(text_encoder or DEFAULT_TEXT_ENCODER, progress=False,
                              cache_dir=Path(cache_dir) / "text-features" if cache_dir else None)
        vectors["text"] = list(encoder.encode([row["text"] for _, row in rows]))
        extractors["text"] = asdict(encoder.info)
    if "audio" in modalities:
        from redifu.features.audio import AudioFeatureExtractor

        extractor = audio_extractor or AudioFeatureExtractor(
            audio_set, cache_dir=Path(cache_dir) / "audio-features" if cache_dir else None)
        audio = []
        for line, row in rows:
            where = f"{input_path}:{line}: dialogue {row['dialogue_id']!r}: field 'audio'"
            source = Path(row["audio"]).expanduser()
            source = source if source.is_absolute() else input_path.parent / source
            try:
                audio.append(extractor.extract_file(source, row.get("start"), row.get("end")))
            except DataError as error:
                raise DataError(f"{where}: {error}") from None
        vectors["audio"] = audio
        extractors["audio"] = asdict(extractor.info)

    folder.mkdir(parents=True, exist_ok=True)  # only now: a failed extraction leaves nothing behind
    written = []
    for position, ((_, row), name) in enumerate(zip(rows, names)):
        row = dict(row)
        if "audio" in row:  # predict reads `audio` as an inline vector
            row["audio_path"] = row.pop("audio")
        for modality in modalities:
            target = folder / f"{name}_{modality}.npy"
            _atomic_save_npy(target, vectors[modality][position])
            row[f"{modality}_npy"] = os.path.relpath(target, output.parent).replace(os.sep, "/")
            row[f"{modality}_extractor"] = extractors[modality]["name"]
        written.append(row)
    _write_rows(output, written)
    dimensions = {m: int(vectors[m][0].shape[0]) for m in modalities}
    logger.info("features extract: %d rows, %s -> %s", len(rows), dimensions, output)
    return {"rows": len(rows), "dimensions": dimensions, "extractors": extractors, "features_dir": str(folder)}
