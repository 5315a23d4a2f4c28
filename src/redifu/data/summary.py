"""A plain-text summary of a dataset: splits, labels, feature sizes and provenance."""

from __future__ import annotations

from typing import Any

import numpy as np

from redifu.data.dialogue import IGNORE_LABEL, DialogueCorpus
from redifu.errors import SPLITS

__all__ = ["describe"]


def describe(corpus: DialogueCorpus, provenance: dict[str, Any] | None = None) -> str:
    """A plain-text summary: dialogues and utterances per split, labels, feature sizes."""
    meta = corpus.metadata
    splits = [s for s in SPLITS if s in corpus.splits]
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
