"""Training speed of one configuration: parameters, seconds per epoch, utterances per second.

Times whole training epochs (forward, loss, backward, AdamW step, gradient clipping) over the
training split in the same batches the trainer uses, without Lightning's logging, plus one
pass over dev in eval mode without autograd. Prints the machine, the settings and the median
over repetitions.

    python benchmarks/train_speed.py --config configs/iemocap.yaml --epochs 2
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time

import torch
from torch.utils.data import DataLoader

from redifu.config import load_config
from redifu.data.batching import DialogueDataset, collate_dialogues, feature_statistics
from redifu.data.loading import load_corpus
from redifu.model import ReDiFu
from redifu.training.evaluation import predict_split
from redifu.training.loss import redifu_loss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="experiment config (default: built-in defaults)")
    parser.add_argument("--epochs", type=int, default=2, help="timed training epochs (median reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config, args.overrides)
    corpus = load_corpus(config.data)
    meta = corpus.metadata
    model_config = config.model_config(modality_dims=meta.modality_dims, num_classes=meta.num_classes,
                                       num_speakers=meta.num_speakers)
    torch.manual_seed(0)
    model = ReDiFu(model_config)
    model.set_feature_statistics(feature_statistics(corpus.splits["train"], model_config.modalities))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.training.lr)
    dataset = DialogueDataset(corpus.splits["train"], model_config.modalities)
    loader = DataLoader(dataset, batch_size=config.training.batch_size, shuffle=True, collate_fn=collate_dialogues)
    utterances = corpus.num_utterances("train")
    epoch_seconds, data_seconds = [], []
    for _ in range(args.epochs):
        model.train()
        started, waiting = time.perf_counter(), 0.0
        fetch = time.perf_counter()
        for batch in loader:
            waiting += time.perf_counter() - fetch
            output = model(batch.features, batch.speakers, batch.mask)
            loss, _ = redifu_loss(output, batch.labels, aux_weight=config.training.aux_loss_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.training.grad_clip or float("inf"))
            optimizer.step()
            fetch = time.perf_counter()
        epoch_seconds.append(time.perf_counter() - started)
        data_seconds.append(waiting)
    started = time.perf_counter()
    predict_split(model, corpus.splits["dev"], batch_size=config.training.eval_batch_size)
    eval_seconds = time.perf_counter() - started
    epoch = statistics.median(epoch_seconds)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"config: {args.config or 'defaults'} {' '.join(args.overrides)}")
    print(f"model: hidden {model_config.hidden_size}, heads {model_config.num_heads}, window {model_config.window}, "
          f"denoiser {model_config.denoiser}, graph {model_config.graph}, fusion {model_config.fusion}; "
          f"batch {config.training.batch_size} dialogues")
    print(f"data: {meta.name}, {utterances} train utterances in {len(dataset)} dialogues")
    print("| parameters | s / epoch (median of %d) | train utt/s | data share | dev eval utt/s | peak RSS MB |"
          % args.epochs)
    print("|---|---|---|---|---|---|")
    print(f"| {model.num_parameters():,} | {epoch:.1f} | {utterances / epoch:.0f} | "
          f"{100 * statistics.median(data_seconds) / epoch:.1f}% | "
          f"{corpus.num_utterances('dev') / eval_seconds:.0f} | {peak_rss_mb:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
