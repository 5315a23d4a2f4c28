"""Scaling in dialogue length: ONE dialogue of N utterances, forward + backward.

Builds the model at the given settings (default: the authors' IEMOCAP settings,
``configs/iemocap.yaml``: hidden 512, 64 heads, window 20, dropout 0.5), makes one dialogue of
N utterances with two alternating speakers and random features of the preset's sizes, and
times forward + loss + backward for each N in two modes:

* ``train``: training mode, dropout on (what a training step does), for N up to
  ``--train-max``. Attention dropout draws one random number per element of every
  ``(heads, N, N)`` attention map from PyTorch's serial CPU generator (and again in backward,
  to recompute the map chunk by chunk instead of storing it), so this mode's time grows
  with N^2 at a few tens of millions of draws per second;
* ``no dropout``: eval mode (dropout off) with autograd on, every N: the model's own compute
  and memory (fused flash attention, linear memory).

Memory per N is the RSS high-water mark of that N alone (reset before each N after giving
freed heap back); on CUDA the allocator's peak too. With a fixed graph window the graph is
linear in N and the attention maps are never stored whole, so memory grows linearly in N.

    python benchmarks/scaling.py --lengths 25 100 400 800 1600 5000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

from redifu.model import ReDiFu  # noqa: E402
from redifu.training.loss import redifu_loss  # noqa: E402

LENGTHS = (25, 50, 100, 200, 400, 800, 1600, 3200, 5000)


def one_dialogue(model: ReDiFu, length: int, device: torch.device, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(1, length, d, generator=generator).to(device)
                for m, d in model.config.modality_dims.items()}
    speakers = (torch.arange(length) % 2)[None].to(device)
    labels = torch.randint(0, model.config.num_classes, (1, length), generator=generator).to(device)
    mask = torch.ones(1, length, dtype=torch.bool, device=device)
    return features, speakers, mask, labels


def measure_scaling(
    config_path: str | None = "configs/iemocap.yaml",
    overrides: Sequence[str] = (),
    *,
    lengths: Sequence[int] = LENGTHS,
    repeats: int = 3,
    repeat_below: int = 1000,
    train_max: int = 800,
    device: str = "auto",
) -> dict[str, Any]:
    """Median seconds and peak memory of forward + backward for each dialogue length."""
    torch_device = bc.pick_device(device)
    setup = bc.build(config_path, overrides, device=torch_device)
    model = setup.model
    setup.corpus.splits.clear()  # only the metadata is needed; free the corpus before measuring

    def step(inputs) -> None:
        features, speakers, mask, labels = inputs
        output = model(features, speakers, mask)
        loss, _ = redifu_loss(output, labels, aux_weight=setup.config.training.aux_loss_weight)
        loss.backward()
        model.zero_grad(set_to_none=True)

    def measure(length: int, train: bool) -> dict[str, Any]:
        model.train(train)
        inputs = one_dialogue(model, length, torch_device)
        bc.reset_peak_rss()
        if torch_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(torch_device)
        # Training mode pays N^2 serial random draws: repeat it only for short dialogues.
        count = repeats if length < (repeat_below if not train else repeat_below // 4) else 1
        try:
            times = [bc.timed(lambda: step(inputs), torch_device) for _ in range(count)]
        except torch.OutOfMemoryError:  # a GPU's memory (a CPU process is killed instead)
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            print(f"N={length} {'train' if train else 'no dropout'}: out of GPU memory", file=sys.stderr, flush=True)
            return {"seconds": None, "repeats": 0, "peak_rss_mb": bc.peak_rss_mb(), "out_of_memory": True,
                    "cuda_peak_mb": bc.cuda_peak_mb(torch_device)}
        row = {"seconds": bc.median(times), "repeats": len(times), "peak_rss_mb": bc.peak_rss_mb(),
               "cuda_peak_mb": bc.cuda_peak_mb(torch_device)}
        print(f"N={length} {'train' if train else 'no dropout'}: {row['seconds']:.3f} s, "
              f"peak RSS {row['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
        return row

    rows = []
    step(one_dialogue(model, 8, torch_device))  # warm-up
    for length in lengths:
        rows.append({"length": length, "train": measure(length, True) if length <= train_max else None,
                     "no_dropout": measure(length, False)})
    return {"config": config_path or "defaults", "overrides": list(overrides), "machine": bc.machine(),
            "settings": bc.settings_line(setup), "rows": rows}


def report(result: dict[str, Any]) -> str:
    rows = result["rows"]

    def cells(entry: dict[str, Any] | None) -> list[Any]:
        if entry is None:
            return ["not run", "", ""]
        if entry.get("out_of_memory"):
            return ["out of memory", entry["peak_rss_mb"], entry["cuda_peak_mb"]]
        return [round(entry["seconds"], 3), entry["peak_rss_mb"], entry["cuda_peak_mb"]]

    lines = ["- " + bc.machine_line(result["machine"]),
             f"- config: {result['config']} {' '.join(result['overrides'])}".rstrip(), "- " + result["settings"], "",
             bc.table(["N utterances", "train: s (median)", "train: peak RSS MB", "train: CUDA peak MB",
                       "no dropout: s (median)", "no dropout: peak RSS MB", "no dropout: CUDA peak MB"],
                      [[r["length"], *cells(r["train"]), *cells(r["no_dropout"])] for r in rows])]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/iemocap.yaml")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--repeats", type=int, default=3, help="repetitions per length below 1000 (median)")
    parser.add_argument("--train-max", type=int, default=800, help="largest N run in training mode")
    bc.add_run_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = measure_scaling(args.config, args.overrides, lengths=args.lengths, repeats=args.repeats,
                             train_max=args.train_max, device=args.device)
    return bc.finish(args, result, report(result))


if __name__ == "__main__":
    sys.exit(main())
