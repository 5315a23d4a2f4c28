"""Seeded corruption of audio and visual features, for the robustness grid.

Three kinds, each with a strength ``level``; ``mean`` and ``std`` are the per-dimension
statistics of the clean training split, so strengths mean the same for every feature set:

* ``gaussian``: additive Gaussian noise at a signal-to-noise ratio of ``level`` dB on every
  utterance (noise standard deviation ``std * 10 ** (-level / 20)`` per dimension).
* ``burst``: a share ``level`` of utterances has its vector *replaced* by a loud noise burst,
  ``mean + 3 * std * N(0, 1)`` (drawn per modality independently).
* ``drop``: a share ``level`` of utterances has the modality missing, its vector set to the
  training mean (what the model's standardisation maps to zero); ``level=1`` drops the whole
  modality.

The corruption depends only on its seed, the split and the kind, never on the model, so every
variant and every training seed is tested on the same corrupted utterances (a paired comparison).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np

from redifu.data.dialogue import Dialogue, DialogueCorpus

KINDS = ("gaussian", "burst", "drop")
CORRUPTED_MODALITIES = ("audio", "visual")
BURST_SCALE = 3.0
SPLIT_OFFSET = {"train": 0, "dev": 1, "test": 2}  # seed offsets: test-time and train+test see the same test noise
LEVEL_NAMES = {"gaussian": "SNR (dB)", "burst": "share of utterances replaced by noise bursts",
               "drop": "share of utterances with audio and video missing"}


@dataclass(frozen=True)
class Corruption:
    """One corruption: its kind and strength."""

    kind: str
    level: float

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"corruption kind {self.kind!r}: expected one of {KINDS}")
        if self.kind != "gaussian" and not 0.0 <= self.level <= 1.0:
            raise ValueError(f"corruption {self.kind}: level {self.level} is a share, expected 0..1")

    @property
    def name(self) -> str:
        return f"{self.kind}={self.level:g}"

    @classmethod
    def parse(cls, name: str) -> "Corruption":
        kind, _, level = name.partition("=")
        return cls(kind, float(level))


def feature_moments(dialogues: Sequence[Dialogue], modalities: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per modality, the per-dimension mean and standard deviation over ``dialogues``."""
    moments = {}
    for modality in modalities:
        rows = np.concatenate([d.features[modality] for d in dialogues]).astype(np.float64)
        moments[modality] = (rows.mean(0), np.maximum(rows.std(0), 1e-6))
    return moments


def corrupt_dialogues(
    dialogues: Sequence[Dialogue],
    corruption: Corruption,
    moments: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    seed: int,
) -> list[Dialogue]:
    """Copies of ``dialogues`` with their audio and visual features corrupted (text untouched)."""
    modalities = [m for m in CORRUPTED_MODALITIES if m in moments]
    streams = np.random.SeedSequence([seed, KINDS.index(corruption.kind)]).spawn(len(modalities))
    lengths = [len(d) for d in dialogues]
    bounds = np.cumsum(lengths)[:-1]
    corrupted: dict[str, list[np.ndarray]] = {}
    for modality, stream in zip(modalities, streams):
        rng = np.random.default_rng(stream)
        mean, std = (np.asarray(a, dtype=np.float32) for a in moments[modality])
        rows = np.concatenate([d.features[modality] for d in dialogues]).astype(np.float32)
        if corruption.kind == "gaussian":
            scale = np.float32(10.0 ** (-corruption.level / 20.0))
            rows = rows + scale * std * rng.standard_normal(rows.shape, dtype=np.float32)
        else:
            hit = rng.random(rows.shape[0]) < corruption.level
            if corruption.kind == "burst":
                noise = rng.standard_normal((int(hit.sum()), rows.shape[1]), dtype=np.float32)
                rows[hit] = mean + np.float32(BURST_SCALE) * std * noise
            else:
                rows[hit] = mean
        corrupted[modality] = np.split(rows, bounds)
    return [
        replace(d, features={**d.features, **{m: corrupted[m][i] for m in modalities}})
        for i, d in enumerate(dialogues)
    ]


def corrupt_corpus(corpus: DialogueCorpus, corruption: Corruption, *, seed: int) -> DialogueCorpus:
    """Every split corrupted (train and test time), with moments of the clean training split."""
    modalities = [m for m in CORRUPTED_MODALITIES if m in corpus.metadata.modalities]
    moments = feature_moments(corpus.splits["train"], modalities)
    splits = {
        split: corrupt_dialogues(dialogues, corruption, moments, seed=seed + SPLIT_OFFSET[split])
        for split, dialogues in corpus.splits.items()
    }
    provenance = {**corpus.provenance, "corruption": {"kind": corruption.kind, "level": corruption.level,
                                                      "seed": seed}}
    return DialogueCorpus(metadata=corpus.metadata, splits=splits, provenance=provenance)
