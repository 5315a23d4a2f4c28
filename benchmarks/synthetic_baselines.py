"""Calibration baselines for the synthetic generator (redifu.data.synthetic).

Cheap scikit-learn proxies, dev-free (fit on ``train``, score weighted F1 on ``test``), that show
which parts of the generative story a model can exploit:

  (a) text        logistic regression on the text vector of each utterance alone
  (b) t+a+v       ... on text, audio and visual vectors (no context)
  (c) text+ctx    ... on text plus the mean text of the same speaker's utterances within +-5
  (d) t+a+v+ctx   (b) and (c) combined
  (e) (d), clean  (d) on the same corpus with noise bursts disabled (burst_modalities=())
  (f) oracle      ... on the clean latent vectors of all modalities plus their same-speaker
                  context means: a rough ceiling for models that see each utterance with context

Usage::

    python benchmarks/synthetic_baselines.py                     # both presets, seeds 0 1 2
    python benchmarks/synthetic_baselines.py --preset meld --seeds 0
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from redifu.data.dialogue import MODALITIES
from redifu.data.synthetic import (
    PRESETS,
    make_synthetic_corpus_with_truth,
    speaker_context_mean,
)

BASELINES = ("a", "b", "c", "d", "e", "f")
NAMES = {
    "a": "(a) text",
    "b": "(b) t+a+v",
    "c": "(c) text+ctx",
    "d": "(d) t+a+v+ctx",
    "e": "(e) (d) no bursts",
    "f": "(f) oracle latents+ctx",
}


def design(dialogues, truths, *, parts: tuple[str, ...], window: int) -> tuple[np.ndarray, np.ndarray]:
    """Stack per-utterance features. ``parts`` names blocks: a modality, ``"text_ctx"``,
    ``"latent"`` (all clean latents) or ``"latent_ctx"``."""
    rows, labels = [], []
    for dialogue, truth in zip(dialogues, truths):
        blocks = []
        for part in parts:
            if part in MODALITIES:
                blocks.append(dialogue.features[part])
            elif part == "text_ctx":
                blocks.append(speaker_context_mean(dialogue.speakers, dialogue.features["text"], window=window))
            elif part.startswith("latent_") and part[7:] in MODALITIES:
                blocks.append(truth.latents[part[7:]])
            elif part == "latent":
                blocks.extend(truth.latents[m] for m in MODALITIES)
            elif part == "latent_ctx":
                blocks.extend(speaker_context_mean(dialogue.speakers, truth.latents[m], window=window)
                              for m in MODALITIES)
            else:
                raise ValueError(f"unknown part {part!r}")
        rows.append(np.concatenate(blocks, axis=1))
        labels.append(dialogue.labels)
    return np.concatenate(rows), np.concatenate(labels)


def score(train, test, *, parts, window, C, max_iter) -> float:
    x_train, y_train = design(*train, parts=parts, window=window)
    x_test, y_test = design(*test, parts=parts, window=window)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    model.fit(x_train, y_train)
    return 100.0 * f1_score(y_test, model.predict(x_test), average="weighted")


def run_preset(preset: str, seed: int, *, window: int, C: float, max_iter: int, baselines) -> dict[str, float]:
    corpus, truth = make_synthetic_corpus_with_truth(preset, seed=seed)
    split = lambda c, t, s: (c.splits[s], t[s])  # noqa: E731
    train, test = split(corpus, truth, "train"), split(corpus, truth, "test")
    plans = {
        "a": ("text",),
        "b": ("text", "audio", "visual"),
        "c": ("text", "text_ctx"),
        "d": ("text", "audio", "visual", "text_ctx"),
        "f": ("latent", "latent_ctx"),
    }
    results = {}
    for key, parts in plans.items():
        if key in baselines:
            results[key] = score(train, test, parts=parts, window=window, C=C, max_iter=max_iter)
    if "e" in baselines:
        clean, clean_truth = make_synthetic_corpus_with_truth(preset, seed=seed, burst_modalities=())
        results["e"] = score(split(clean, clean_truth, "train"), split(clean, clean_truth, "test"),
                             parts=plans["d"], window=window, C=C, max_iter=max_iter)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), action="append",
                        help="preset to calibrate (repeatable; default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--window", type=int, default=5, help="same-speaker context window (+-)")
    parser.add_argument("--C", type=float, default=0.01, help="inverse L2 strength of the LR")
    parser.add_argument("--max-iter", type=int, default=500)
    parser.add_argument("--baselines", default="".join(BASELINES), help="subset of letters a-f")
    args = parser.parse_args(argv)

    presets = args.preset or sorted(PRESETS)
    header = f"{'preset':8s} " + " ".join(f"{NAMES[k]:>24s}" for k in args.baselines)
    print(f"weighted F1 x100 on test, mean +- std over seeds {args.seeds}; LR C={args.C}, window +-{args.window}")
    print(header)
    for preset in presets:
        start = time.perf_counter()
        per_seed = [run_preset(preset, s, window=args.window, C=args.C, max_iter=args.max_iter,
                               baselines=args.baselines) for s in args.seeds]
        cells = []
        for key in args.baselines:
            values = np.array([r[key] for r in per_seed])
            cells.append(f"{values.mean():17.1f} +- {values.std():4.1f}")
        print(f"{preset:8s} " + " ".join(cells) + f"   ({time.perf_counter() - start:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
