"""redifu's open dataset format: a directory with a JSON manifest and safetensors arrays.

No pickle: anyone can read it with any safetensors and JSON library. Layout::

    DIR/manifest.json       format, version, metadata (classes, speakers, modality sizes),
                            dialogue ids per split, utterance counts, provenance
    DIR/<split>.safetensors per split, utterances of all its dialogues concatenated:
                            speakers (U,) int64, labels (U,) int64, offsets (D+1,) int64
                            (dialogue d spans rows offsets[d]:offsets[d+1]),
                            and one (U, D_m) float32 array per modality
    DIR/<split>.transcripts.json  where the dialogues come from transcripts: per dialogue (in
                            the manifest's order) {"speakers": [names], "texts": [texts]}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from safetensors.numpy import load_file, save_file

from redifu.data.dialogue import DataError, DatasetMetadata, Dialogue, DialogueCorpus
from redifu.files import atomic_directory, recover_directory

FORMAT = "redifu-dataset"
VERSION = 1
MANIFEST = "manifest.json"


def is_stored_corpus(path: str | Path) -> bool:
    return (recover_directory(path) / MANIFEST).is_file()


def save_corpus(corpus: DialogueCorpus, directory: str | Path, *, provenance: Mapping[str, Any] | None = None) -> Path:
    """Write ``corpus`` to ``directory`` atomically (a complete dataset or nothing)."""
    directory = Path(directory)
    corpus.validate(str(directory))
    recover_directory(directory)
    if directory.exists() and not is_stored_corpus(directory) and (not directory.is_dir() or any(directory.iterdir())):
        raise DataError(f"{directory}: exists and is not a redifu dataset; refusing to overwrite")
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "metadata": corpus.metadata.to_dict(),
        "splits": {split: [d.dialogue_id for d in dialogues] for split, dialogues in corpus.splits.items()},
        "utterances": {split: corpus.num_utterances(split) for split in corpus.splits},
        "provenance": dict(provenance or {}),
    }
    with atomic_directory(directory) as staging:
        for split, dialogues in corpus.splits.items():
            lengths = np.array([len(d) for d in dialogues], dtype=np.int64)
            arrays = {
                "speakers": np.concatenate([d.speakers for d in dialogues]).astype(np.int64),
                "labels": np.concatenate([d.labels for d in dialogues]).astype(np.int64),
                "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            }
            for modality in corpus.metadata.modality_dims:
                arrays[modality] = np.ascontiguousarray(
                    np.concatenate([d.features[modality] for d in dialogues]), dtype=np.float32
                )
            save_file(arrays, str(staging / f"{split}.safetensors"), metadata={"format": FORMAT})
            if all(d.transcript is not None for d in dialogues):
                transcripts = [{"speakers": list(d.speaker_names), "texts": list(d.texts)} for d in dialogues]
                (staging / f"{split}.transcripts.json").write_text(json.dumps(transcripts, ensure_ascii=False) + "\n")
        # the staging directory is renamed into place whole, so plain writes inside it are atomic
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return directory


def read_manifest(directory: str | Path) -> dict[str, Any]:
    recover_directory(directory)  # a replacement interrupted between its two renames
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{directory}: not a redifu dataset ({MANIFEST} is missing)") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: invalid JSON ({error.msg}, line {error.lineno})") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path}: field 'format': expected {FORMAT!r}, got {manifest.get('format')!r}")
    if manifest.get("version") != VERSION:
        raise DataError(f"{path}: field 'version': this redifu reads version {VERSION}, got {manifest.get('version')!r}")
    return manifest


def load_stored_corpus(directory: str | Path, *, splits: Sequence[str] | None = None) -> DialogueCorpus:
    """Read a dataset written by :func:`save_corpus`, validating every dialogue.

    ``splits`` (default: all) names the splits to read; the files of the others are not opened,
    so a hyper-parameter search can train on train/dev without ever reading test.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    try:
        metadata = DatasetMetadata.from_dict(manifest["metadata"])
    except KeyError as error:
        raise DataError(f"{directory / MANIFEST}: field 'metadata.{error.args[0]}': missing") from None
    loaded: dict[str, list[Dialogue]] = {}
    for split, ids in manifest["splits"].items():
        if splits is not None and split not in splits:
            continue
        path = directory / f"{split}.safetensors"
        try:
            arrays = load_file(str(path))
        except FileNotFoundError:
            raise DataError(f"{path}: missing (listed in {MANIFEST})") from None
        except Exception as error:  # safetensors raises its own error types on corrupt files
            raise DataError(f"{path}: cannot read ({error})") from None
        for field in ("speakers", "labels", "offsets", *metadata.modality_dims):
            if field not in arrays:
                raise DataError(f"{path}: field {field!r}: missing")
        offsets = arrays["offsets"]
        if len(offsets) != len(ids) + 1 or offsets[0] != 0 or (np.diff(offsets) < 0).any() \
                or offsets[-1] != len(arrays["speakers"]):
            raise DataError(f"{path}: field 'offsets': does not match the {len(ids)} dialogues of split {split!r}")
        transcripts = _read_transcripts(directory / f"{split}.transcripts.json", len(ids))
        dialogues = []
        for index, dialogue_id in enumerate(ids):
            rows = slice(int(offsets[index]), int(offsets[index + 1]))
            transcript = transcripts[index] if transcripts is not None else {}
            dialogues.append(Dialogue(
                dialogue_id=str(dialogue_id),
                speakers=arrays["speakers"][rows],
                labels=arrays["labels"][rows],
                features={m: arrays[m][rows] for m in metadata.modality_dims},
                speaker_names=_strings(transcript.get("speakers")),
                texts=_strings(transcript.get("texts")),
            ))
        loaded[split] = dialogues
    corpus = DialogueCorpus(metadata=metadata, splits=loaded, provenance=dict(manifest.get("provenance", {})))
    corpus.validate(str(directory))
    return corpus


def _read_transcripts(path: Path, count: int) -> list[dict[str, Any]] | None:
    """The per-dialogue transcripts of a split, or ``None`` when the dataset has none."""
    if not path.is_file():
        return None
    try:
        transcripts = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: invalid JSON ({error})") from None
    if not isinstance(transcripts, list) or len(transcripts) != count \
            or not all(isinstance(t, dict) for t in transcripts):
        raise DataError(f"{path}: expected one {{speakers, texts}} object per dialogue ({count})")
    return transcripts


def _strings(values: Any) -> tuple[str, ...] | None:
    return tuple(values) if isinstance(values, list) else None
