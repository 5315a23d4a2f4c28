"""Calibration baselines for the synthetic generator (redifu.data.synthetic).

Cheap scikit-learn proxies, dev-free (fit on ``train``, score weighted F1 on ``test``; the dev
split is not used), that show which parts of the generative story a model can exploit. Every
baseline is a standardised L2 logistic regression with the same fixed ``C``:

  (a) text           text vector of each utterance alone (context-free)
  (b) t+a+v          text, audio and visual vectors of each utterance (no context)
  (c) text+ctx       text plus the mean text of the same speaker's utterances within +-window
  (d) t+a+v+ctx      (b) and (c) combined
  (e) (d) no bursts  (d) on the same corpus with noise bursts disabled (burst_modalities=());
                     every other array is bit-identical, so (e) - (d) is what the bursts cost
  (f) oracle latent  the clean latent vectors of all modalities (no bursts, no projection, no
                     feature noise) plus their same-speaker context means
  (g) oracle labels  (f) plus the gold labels (one-hot) of the previous and next utterance of
                     the same speaker and of the previous utterance of another speaker: a rough
                     ceiling for a model that reads context perfectly

Usage::

    python benchmarks/synthetic_baselines.py                     # both presets, seeds 0 1 2 3 4
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
from threadpoolctl import threadpool_limits

from redifu.data.dialogue import MODALITIES
from redifu.data.synthetic import PRESETS, make_synthetic_corpus_with_truth, speaker_context_mean

NAMES = {
    "a": "(a) text",
    "b": "(b) t+a+v",
    "c": "(c) text+ctx",
    "d": "(d) t+a+v+ctx",
    "e": "(e) no bursts",
    "f": "(f) oracle latent",
    "g": "(g) oracle labels",
}
PLANS = {
    "a": ("text",),
    "b": ("text", "audio", "visual"),
    "c": ("text", "text_ctx"),
    "d": ("text", "audio", "visual", "text_ctx"),
    "e": ("text", "audio", "visual", "text_ctx"),
    "f": ("latent", "latent_ctx"),
    "g": ("latent", "latent_ctx", "gold_ctx"),
}
# Paired differences (same seed) whose sign the calibration is about.
CONTRASTS = (("b", "a"), ("c", "a"), ("d", "b"), ("d", "c"), ("e", "d"))


def gold_context(speakers: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """One-hot gold labels of the previous/next same-speaker and previous other-speaker utterance."""
    n = speakers.shape[0]
    out = np.zeros((n, 3, num_classes), dtype=np.float32)
    for i in range(n):
        same_prev = next((j for j in range(i - 1, -1, -1) if speakers[j] == speakers[i]), None)
        same_next = next((j for j in range(i + 1, n) if speakers[j] == speakers[i]), None)
        other_prev = next((j for j in range(i - 1, -1, -1) if speakers[j] != speakers[i]), None)
        for slot, j in enumerate((same_prev, same_next, other_prev)):
            if j is not None:
                out[i, slot, labels[j]] = 1.0
    return out.reshape(n, 3 * num_classes)


def design(dialogues, truths, *, parts, window: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Stack per-utterance feature blocks named by ``parts`` over all dialogues."""
    rows, labels = [], []
    for dialogue, truth in zip(dialogues, truths):
        blocks = []
        for part in parts:
            if part in MODALITIES:
                blocks.append(dialogue.features[part])
            elif part == "text_ctx":
                blocks.append(speaker_context_mean(dialogue.speakers, dialogue.features["text"], window=window))
            elif part == "latent":
                blocks.extend(truth.latents[m] for m in MODALITIES)
            elif part == "latent_ctx":
                blocks.extend(speaker_context_mean(dialogue.speakers, truth.latents[m], window=window)
                              for m in MODALITIES)
            elif part == "gold_ctx":
                blocks.append(gold_context(dialogue.speakers, dialogue.labels, num_classes))
            else:
                raise ValueError(f"unknown part {part!r}")
        rows.append(np.concatenate(blocks, axis=1))
        labels.append(dialogue.labels)
    return np.concatenate(rows), np.concatenate(labels)


def score(corpus, truth, parts, *, window: int, C: float, max_iter: int) -> float:
    k = corpus.metadata.num_classes
    x_train, y_train = design(corpus.splits["train"], truth["train"], parts=parts, window=window, num_classes=k)
    x_test, y_test = design(corpus.splits["test"], truth["test"], parts=parts, window=window, num_classes=k)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    model.fit(x_train, y_train)
    return 100.0 * f1_score(y_test, model.predict(x_test), average="weighted")


def run_preset(preset: str, seed: int, *, baselines: str, window: int, C: float, max_iter: int) -> dict[str, float]:
    corpus, truth = make_synthetic_corpus_with_truth(preset, seed=seed)
    results = {}
    for key in baselines:
        if key == "e":
            clean, clean_truth = make_synthetic_corpus_with_truth(preset, seed=seed, burst_modalities=())
            results[key] = score(clean, clean_truth, PLANS[key], window=window, C=C, max_iter=max_iter)
        else:
            results[key] = score(corpus, truth, PLANS[key], window=window, C=C, max_iter=max_iter)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), action="append",
                        help="preset to calibrate (repeatable; default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--window", type=int, default=5, help="same-speaker context window (+-)")
    parser.add_argument("--C", type=float, default=0.001, help="inverse L2 strength of every LR")
    parser.add_argument("--max-iter", type=int, default=500)
    parser.add_argument("--baselines", default="".join(NAMES), help="subset of the letters a-g")
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS/OpenMP threads (1 is fastest for these small fits)")
    args = parser.parse_args(argv)
    unknown = set(args.baselines) - set(NAMES)
    if unknown:
        parser.error(f"unknown baseline letters: {''.join(sorted(unknown))}")
    with threadpool_limits(limits=args.threads):
        report(args)
    return 0


def report(args) -> None:
    presets = args.preset or sorted(PRESETS)
    keys = list(args.baselines)
    contrasts = [(x, y) for x, y in CONTRASTS if x in keys and y in keys]
    print(f"weighted F1 x100 on test (fit on train), mean +- std over seeds {args.seeds}; "
          f"LR C={args.C}, window +-{args.window}")
    print("| preset | " + " | ".join(NAMES[k] for k in keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    paired = {}
    for preset in presets:
        start = time.perf_counter()
        per_seed = [run_preset(preset, s, baselines=args.baselines, window=args.window, C=args.C,
                               max_iter=args.max_iter) for s in args.seeds]
        cells = []
        for key in keys:
            values = np.array([r[key] for r in per_seed])
            cells.append(f"{values.mean():.1f} +- {values.std():.1f}")
        print(f"| {preset} | " + " | ".join(cells) + f" |   ({time.perf_counter() - start:.0f}s)", flush=True)
        paired[preset] = {c: np.array([r[c[0]] - r[c[1]] for r in per_seed]) for c in contrasts}
    if contrasts:
        print("\npaired differences (same seed), mean [min over seeds]")
        print("| preset | " + " | ".join(f"{x} - {y}" for x, y in contrasts) + " |")
        print("|---" * (len(contrasts) + 1) + "|")
        for preset, diffs in paired.items():
            print(f"| {preset} | " + " | ".join(
                f"{diffs[c].mean():+.1f} [{diffs[c].min():+.1f}]" for c in contrasts) + " |")


if __name__ == "__main__":
    sys.exit(main())
