"""Prediction throughput and streaming memory of `redifu predict`.

Throughput: dialogues per second through ``Predictor.predict_many`` with one dialogue per batch
("single") and with ``--batch-size`` dialogues per batch ("batch"), after a warm-up pass (text
features then come from the encoder's cache, so the figure is the model's, plus feature I/O).
Memory: peak resident set of the `redifu predict` CLI on a generated JSON Lines file and on one
``--scale`` times larger; a flat figure means the input streams.

    python benchmarks/predict_throughput.py --checkpoint runs/meld-text/checkpoint \
        --texts ../shared/data/meld/test_sent_emo.csv
    python benchmarks/predict_throughput.py --checkpoint runs/default/checkpoint     # synthetic features
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from redifu.predict import InputUtterance, Predictor


def dialogues_from_texts(path: Path, count: int) -> list[list[InputUtterance]]:
    """MELD-style CSV rows grouped into dialogues (text only), repeated up to ``count``."""
    with open(path, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row["Dialogue_ID"], []).append(row)
    base = [[InputUtterance(dialogue_id=f"d{k}", index=i, speaker=r["Speaker"], text=r["Utterance"], features={})
             for i, r in enumerate(group)] for k, group in enumerate(grouped.values())]
    return repeat(base, count)


def repeat(base: list[list[InputUtterance]], count: int) -> list[list[InputUtterance]]:
    """``count`` dialogues cycling through ``base``, each with its own id."""
    return [[replace(u, dialogue_id=f"d{i}") for u in base[i % len(base)]] for i in range(count)]


def dialogues_from_synthetic(predictor: Predictor, count: int) -> list[list[InputUtterance]]:
    """Dialogues of the synthetic test split with precomputed features (IEMOCAP-shaped model)."""
    from redifu.data.synthetic import make_synthetic_corpus

    corpus = make_synthetic_corpus("iemocap", seed=0)
    base = []
    for d in corpus.splits["test"]:
        base.append([InputUtterance(dialogue_id=d.dialogue_id, index=i, speaker=f"s{int(d.speakers[i])}", text=None,
                                    features={m: d.features[m][i] for m in predictor.modalities})
                     for i in range(len(d))])
    return repeat(base, count)


def rate(predictor: Predictor, dialogues, batch_size: int) -> float:
    predictor.batch_size = batch_size
    started = time.perf_counter()
    for _ in predictor.predict_many(iter(dialogues)):
        pass
    return len(dialogues) / (time.perf_counter() - started)


def write_jsonl(dialogues, path: Path) -> None:
    with open(path, "w") as stream:
        for dialogue in dialogues:
            for u in dialogue:
                row = {"dialogue_id": u.dialogue_id, "utterance": u.index, "speaker": u.speaker}
                if u.text is not None:
                    row["text"] = u.text
                row.update({m: np.asarray(v).round(4).tolist() for m, v in u.features.items()})
                stream.write(json.dumps(row) + "\n")


def peak_rss_mb(checkpoint: str, path: Path) -> tuple[float, float]:
    """Peak RSS (MB) and wall seconds of `redifu predict` on ``path`` (output to a temp file)."""
    out = path.with_suffix(".out.jsonl")
    code = ("import resource, sys, time; from redifu.cli import main; t = time.perf_counter(); "
            f"rc = main(['predict', '--checkpoint', {checkpoint!r}, {str(path)!r}, '--output', {str(out)!r}, "
            "'--no-progress']); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "
            "time.perf_counter() - t); sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"redifu predict failed on {path}: {result.stderr.strip().splitlines()[-1]}")
    rss, seconds = result.stdout.split()[-2:]
    return float(rss), float(seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--texts", type=Path, help="MELD-style CSV for a text model (else synthetic features)")
    parser.add_argument("--dialogues", type=int, default=280, help="dialogues per timing pass")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--memory-dialogues", type=int, default=500, help="dialogues in the small streaming file")
    parser.add_argument("--scale", type=int, default=10, help="the large file is this many times the small one")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = Predictor.from_pretrained(args.checkpoint, device="cpu")

    def make(count: int):
        if args.texts:
            return dialogues_from_texts(args.texts, count)
        return dialogues_from_synthetic(predictor, count)

    dialogues = make(args.dialogues)
    rate(predictor, dialogues, args.batch_size)  # warm-up: fills the text cache, first-call costs
    single = rate(predictor, dialogues, 1)
    batched = rate(predictor, dialogues, args.batch_size)
    utterances = sum(len(d) for d in dialogues)
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads")
    print(f"checkpoint: {args.checkpoint} (modalities {', '.join(predictor.modalities)}); "
          f"{len(dialogues)} dialogues, {utterances} utterances per pass")
    print("| single (dialogues/s) | batch of %d (dialogues/s) | batch utterances/s |" % args.batch_size)
    print("|---|---|---|")
    print(f"| {single:.1f} | {batched:.1f} | {batched * utterances / len(dialogues):.0f} |")
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for count in (args.memory_dialogues, args.memory_dialogues * args.scale):
            path = Path(tmp) / f"in-{count}.jsonl"
            write_jsonl(make(count), path)
            size = path.stat().st_size / 2**20
            rss, seconds = peak_rss_mb(args.checkpoint, path)
            rows.append((count, size, rss, seconds))
        print("\n| input dialogues | input MB | peak RSS MB (CLI) | seconds |")
        print("|---|---|---|---|")
        for count, size, rss, seconds in rows:
            print(f"| {count} | {size:.1f} | {rss:.0f} | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
