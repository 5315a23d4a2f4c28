"""Inference: latency of one dialogue and throughput of batch prediction over a test-sized split.

* latency: one dialogue of ``--utterances`` (20) utterances at the given settings (default the
  authors' IEMOCAP settings), eval mode, autograd off (``torch.inference_mode``), median over
  ``--repeats`` calls after warm-up; also eval mode with autograd on (as the authors' training
  script evaluates), for comparison;
* batch prediction: ``predict_split`` (what ``redifu evaluate`` runs: batching, padding,
  softmax, gathering per-utterance results) over the first ``--batch-utterances`` (2,610, the
  size of MELD's test split) utterances of the synthetic test split at the batch settings
  (default the authors' MELD settings, ``configs/meld.yaml``), median over repetitions.

    python benchmarks/latency.py
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402
from scaling import one_dialogue  # noqa: E402

from redifu.data.dialogue import Dialogue  # noqa: E402
from redifu.training.evaluation import predict_split  # noqa: E402


def first_utterances(dialogues: Sequence[Dialogue], count: int) -> list[Dialogue]:
    """The leading dialogues holding ``count`` utterances in all (the last one cut short)."""
    import dataclasses

    chosen, total = [], 0
    for dialogue in dialogues:
        if total >= count:
            break
        keep = min(len(dialogue.labels), count - total)
        if keep < len(dialogue.labels):
            dialogue = dataclasses.replace(
                dialogue, features={m: x[:keep] for m, x in dialogue.features.items()},
                speakers=dialogue.speakers[:keep], labels=dialogue.labels[:keep],
            )
        chosen.append(dialogue)
        total += keep
    return chosen


def measure_latency(
    config_path: str | None = "configs/iemocap.yaml",
    overrides: Sequence[str] = (),
    *,
    utterances: int = 20,
    repeats: int = 50,
    device: str = "auto",
) -> dict[str, Any]:
    torch_device = bc.pick_device(device)
    setup = bc.build(config_path, overrides, device=torch_device)
    setup.corpus.splits.clear()
    model = setup.model.eval()
    features, speakers, mask, _ = one_dialogue(model, utterances, torch_device)

    def call() -> None:
        model(features, speakers, mask)

    def timings(context) -> dict[str, float]:
        with context():
            for _ in range(5):
                call()
            times = [bc.timed(call, torch_device) for _ in range(repeats)]
        return {"median_ms": 1000 * bc.median(times), "min_ms": 1000 * min(times), "max_ms": 1000 * max(times)}

    results = {"no_grad": timings(torch.inference_mode), "autograd": timings(torch.enable_grad)}
    # The same weights stored in bfloat16 (half the bytes to stream per call); predictions agree
    # with float32 within bfloat16 rounding.
    with torch.inference_mode():
        reference = model(features, speakers, mask).logits.float().softmax(-1)
    model = copy.deepcopy(model).to(torch.bfloat16)
    features = {m: x.to(torch.bfloat16) for m, x in features.items()}
    results["no_grad_bf16"] = timings(torch.inference_mode)
    with torch.inference_mode():
        low = model(features, speakers, mask).logits.float().softmax(-1)
    results["no_grad_bf16"]["max_probability_difference"] = float((low - reference).abs().max())
    return {"config": config_path or "defaults", "overrides": list(overrides), "machine": bc.machine(),
            "settings": bc.settings_line(setup), "utterances": utterances, "repeats": repeats, **results,
            "peak_rss_mb": bc.peak_rss_mb()}


def measure_batch_prediction(
    config_path: str | None = "configs/meld.yaml",
    overrides: Sequence[str] = (),
    *,
    utterances: int = 2610,
    repeats: int = 3,
    device: str = "auto",
) -> dict[str, Any]:
    torch_device = bc.pick_device(device)
    setup = bc.build(config_path, overrides, device=torch_device)
    dialogues = first_utterances(setup.corpus.splits["test"], utterances)
    batch_size = setup.config.training.eval_batch_size

    def call() -> None:
        predict_split(setup.model, dialogues, batch_size=batch_size, device=torch_device)

    call()  # warm-up
    bc.reset_peak_rss()
    times = [bc.timed(call, torch_device) for _ in range(repeats)]
    total = sum(len(d.labels) for d in dialogues)
    seconds = bc.median(times)
    return {"config": config_path or "defaults", "overrides": list(overrides), "machine": bc.machine(),
            "settings": bc.settings_line(setup), "utterances": total, "dialogues": len(dialogues),
            "batch_size": batch_size, "repeats": repeats, "seconds": seconds, "utt_per_s": total / seconds,
            "peak_rss_mb": bc.peak_rss_mb()}


def report(latency: dict[str, Any], batch: dict[str, Any]) -> str:
    bf16 = latency.get("no_grad_bf16")
    return "\n".join([
        "- " + bc.machine_line(latency["machine"]),
        f"- latency config: {latency['config']} {' '.join(latency['overrides'])}".rstrip(), "- " + latency["settings"],
        "",
        bc.table(["one dialogue", "autograd", f"median ms ({latency['repeats']} calls)", "min ms", "max ms"],
                 [[f"{latency['utterances']} utterances", "off (inference_mode)", latency["no_grad"]["median_ms"],
                   latency["no_grad"]["min_ms"], latency["no_grad"]["max_ms"]],
                  [f"{latency['utterances']} utterances", "on", latency["autograd"]["median_ms"],
                   latency["autograd"]["min_ms"], latency["autograd"]["max_ms"]],
                  *([[f"{latency['utterances']} utterances, weights in bfloat16", "off (inference_mode)",
                      bf16["median_ms"], bf16["min_ms"], bf16["max_ms"]]] if bf16 else [])]),
        *(["", f"With the weights in bfloat16 (`model.to(torch.bfloat16)`), class probabilities differ from "
           f"float32 by at most {bf16['max_probability_difference']:.4f}."] if bf16 else []),
        "",
        f"- batch config: {batch['config']} {' '.join(batch['overrides'])}".rstrip(), "- " + batch["settings"], "",
        bc.table(["utterances", "dialogues", "batch", f"s (median of {batch['repeats']})", "utt/s", "peak RSS MB"],
                 [[batch["utterances"], batch["dialogues"], batch["batch_size"], round(batch["seconds"], 3),
                   round(batch["utt_per_s"]), batch["peak_rss_mb"]]]),
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/iemocap.yaml", help="settings of the latency test")
    parser.add_argument("--batch-config", default="configs/meld.yaml", help="settings of batch prediction")
    parser.add_argument("--utterances", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--batch-utterances", type=int, default=2610)
    bc.add_run_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    latency = measure_latency(args.config, args.overrides, utterances=args.utterances, repeats=args.repeats,
                              device=args.device)
    batch = measure_batch_prediction(args.batch_config, args.overrides, utterances=args.batch_utterances,
                                     device=args.device)
    return bc.finish(args, {"latency": latency, "batch": batch}, report(latency, batch))


if __name__ == "__main__":
    sys.exit(main())
