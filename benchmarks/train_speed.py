"""Training speed and memory of one configuration: seconds and peak memory per epoch, data share.

Times whole training epochs (forward, loss, backward, gradient clipping, AdamW step with the
trainer's parameter groups and class weights) over the training split in the batches the
trainer uses, without Lightning's logging, then one pass over dev in eval mode without autograd.
Per epoch it records the time, the time spent waiting for batches (the data share), the RSS
high-water mark of that epoch and the heap in use at its end, so growth from epoch to epoch
shows. Prints the machine, the settings and the median over epochs.

    python benchmarks/train_speed.py --config configs/iemocap.yaml --epochs 3
    python benchmarks/train_speed.py --config configs/meld.yaml --epochs 2 training.precision=bf16-mixed
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

from redifu.data.batching import DialogueDataset, collate_dialogues  # noqa: E402
from redifu.training.evaluation import predict_split  # noqa: E402
from redifu.training.loss import inverse_frequency_weights, redifu_loss  # noqa: E402
from redifu.training.system import autocast_context, parameter_groups  # noqa: E402


def measure_training(
    config_path: str | None,
    overrides: Sequence[str] = (),
    *,
    epochs: int = 2,
    device: str = "auto",
    train_dialogues: int | None = None,
) -> dict[str, Any]:
    """Train ``epochs`` epochs and evaluate dev once; return timings and memory per epoch."""
    torch_device = bc.pick_device(device)
    setup = bc.build(config_path, overrides, device=torch_device)
    training = setup.config.training
    model = setup.model
    if training.compile:
        model = torch.compile(model)
    train = setup.corpus.splits["train"][:train_dialogues]
    class_weights = inverse_frequency_weights(train, setup.model_config.num_classes).to(torch_device) \
        if training.class_weights else None
    optimizer = torch.optim.AdamW(parameter_groups(setup.model, training.weight_decay), lr=training.lr)
    dataset = DialogueDataset(train, setup.model_config.modalities)
    loader = DataLoader(dataset, batch_size=training.batch_size, shuffle=True, collate_fn=collate_dialogues,
                        generator=torch.Generator().manual_seed(0))
    utterances = sum(len(d.labels) for d in train)
    precision = autocast_context(training.precision, torch_device)
    epochs_out = []
    bc.reset_peak_rss()
    for _ in range(epochs):
        model.train()
        if torch_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(torch_device)
        bc.synchronize(torch_device)
        started, waiting = time.perf_counter(), 0.0
        fetch = time.perf_counter()
        for batch in loader:
            batch = batch.to(torch_device)
            waiting += time.perf_counter() - fetch
            with precision:
                output = model(batch.features, batch.speakers, batch.mask)
                loss, _ = redifu_loss(output, batch.labels, aux_weight=training.aux_loss_weight,
                                      class_weights=class_weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if training.grad_clip:
                torch.nn.utils.clip_grad_norm_(setup.model.parameters(), training.grad_clip)
            optimizer.step()
            fetch = time.perf_counter()
        bc.synchronize(torch_device)
        seconds = time.perf_counter() - started
        epochs_out.append({
            "seconds": seconds, "data_seconds": waiting, "peak_rss_mb": bc.peak_rss_mb(),
            "rss_end_mb": bc.rss_mb(), "malloc_in_use_mb": bc.malloc_in_use_mb(),
            "cuda_peak_mb": bc.cuda_peak_mb(torch_device),
        })
        bc.reset_peak_rss()
    dev = setup.corpus.splits["dev"]
    eval_seconds = bc.timed(lambda: predict_split(setup.model, dev, batch_size=training.eval_batch_size,
                                                  device=torch_device), torch_device)
    epoch = bc.median([e["seconds"] for e in epochs_out])
    return {
        "config": config_path or "defaults",
        "overrides": list(overrides),
        "machine": bc.machine(),
        "settings": bc.settings_line(setup),
        "parameters": setup.model.num_parameters(),
        "train_dialogues": len(train),
        "train_utterances": utterances,
        "epochs": epochs_out,
        "epoch_seconds": epoch,
        "train_utt_per_s": utterances / epoch,
        "data_share": bc.median([e["data_seconds"] / e["seconds"] for e in epochs_out]),
        "eval_utt_per_s": sum(len(d.labels) for d in dev) / eval_seconds,
        "peak_rss_mb": max(e["peak_rss_mb"] or 0.0 for e in epochs_out) or None,
        "eval_peak_rss_mb": bc.peak_rss_mb(),
    }


def report(result: dict[str, Any]) -> str:
    lines = ["- " + bc.machine_line(result["machine"]),
             f"- config: {result['config']} {' '.join(result['overrides'])}".rstrip(),
             "- " + result["settings"],
             f"- data: {result['train_utterances']:,} train utterances in {result['train_dialogues']} dialogues",
             "",
             bc.table(
                 ["parameters", f"s / epoch (median of {len(result['epochs'])})", "train utt/s", "data share",
                  "dev eval utt/s", "peak RSS MB"],
                 [[result["parameters"], result["epoch_seconds"], round(result["train_utt_per_s"]),
                   f"{100 * result['data_share']:.1f}%", round(result["eval_utt_per_s"]), result["peak_rss_mb"]]],
             ),
             "",
             bc.table(
                 ["epoch", "s", "data s", "peak RSS MB", "RSS at end MB", "malloc in use MB", "CUDA peak MB"],
                 [[i + 1, e["seconds"], e["data_seconds"], e["peak_rss_mb"], e["rss_end_mb"], e["malloc_in_use_mb"],
                   e["cuda_peak_mb"]] for i, e in enumerate(result["epochs"])],
             )]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="experiment config (default: built-in defaults)")
    parser.add_argument("--epochs", type=int, default=2, help="timed training epochs (median reported)")
    parser.add_argument("--train-dialogues", type=int, help="use only the first N training dialogues")
    bc.add_run_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = measure_training(args.config, args.overrides, epochs=args.epochs, device=args.device,
                              train_dialogues=args.train_dialogues)
    return bc.finish(args, result, report(result))


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
