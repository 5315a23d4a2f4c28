"""Ablations of ReDiFu on the synthetic presets: each component switched off, with several seeds.

Every cell is a full, honest run (model selected on dev, test read once) through the same
``redifu.training.run.train`` that ``redifu train`` uses. Finished cells (those with a
``metrics.json``) are not rerun, so the script can be interrupted and restarted.

    python benchmarks/ablation.py --output runs/ablation --seeds 1 2 3 --write docs/ABLATIONS.md
    python benchmarks/ablation.py --quick     # one seed, tiny data: checks the pipeline only
    python benchmarks/ablation.py --datasets meld-text=configs/meld-text.yaml@data/meld-text \
        --variants "graph off" "context-free text only"      # real data: name=CONFIG@DATA_PATH
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from redifu.config import load_config
from redifu.data.loading import load_corpus
from redifu.training.run import train

VARIANTS: dict[str, list[str]] = {
    "full ReDiFu": [],
    "denoiser off": ["model.denoiser=off"],
    "denoiser temporal": ["model.denoiser=temporal"],
    "graph off": ["model.graph=off"],
    "graph modality-only": ["model.graph=modality"],
    "fusion concat": ["model.fusion=concat"],
    "fusion symmetric": ["model.fusion=symmetric"],
    "text only": ["data.modalities=[text]"],
    "context-free (all modalities)": ["model.denoiser=off", "model.graph=off", "model.fusion=concat",
                                      "model.position_encoding=none"],
    "context-free text only": ["data.modalities=[text]", "model.denoiser=off", "model.graph=off",
                               "model.fusion=concat", "model.position_encoding=none"],
}
PRESETS = {"iemocap": "configs/default.yaml", "meld": "configs/synthetic-meld.yaml"}
QUICK = ["data.synthetic.train_dialogues=12", "data.synthetic.dev_dialogues=4", "data.synthetic.test_dialogues=4",
         "training.max_epochs=2", "model.hidden_size=16", "model.num_heads=2"]


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def run_cell(preset: str, variant: str, seed: int, output: Path, extra: list[str]) -> dict:
    directory = output / preset / slug(variant) / f"seed-{seed}"
    if (directory / "metrics.json").is_file():
        return json.loads((directory / "metrics.json").read_text())
    config_file, _, data_path = PRESETS[preset].partition("@")
    data = [f"data.path={data_path}"] if data_path else []
    overrides = [*data, *VARIANTS[variant], f"training.seed={seed}", "training.progress_bar=false", *extra]
    config = load_config(config_file, overrides)
    corpus = load_corpus(config.data)
    started = time.perf_counter()
    metrics = train(config, directory, corpus=corpus)
    print(f"{preset:8} {variant:32} seed {seed}: test wF1 {metrics['test']['weighted_f1']:.2f} "
          f"(dev {metrics['dev']['weighted_f1']:.2f}, epoch {metrics['selected_epoch']}, "
          f"{time.perf_counter() - started:.0f} s)", flush=True)
    return metrics


def table(results: dict, presets: list[str], seeds: list[int]) -> str:
    lines = []
    for preset in presets:
        full = np.array([results[(preset, "full ReDiFu", s)]["test"]["weighted_f1"] for s in seeds])
        title = f"{preset}-shaped synthetic preset" if "@" not in PRESETS[preset] else preset
        lines += [f"\n### {title}\n",
                  "| variant | test weighted F1 | test accuracy | test macro F1 | dev weighted F1 | Δ wF1 vs full |",
                  "|---|---|---|---|---|---|"]
        for variant in VARIANTS:
            runs = [results[(preset, variant, s)] for s in seeds]

            def cell(split: str, key: str) -> str:
                values = np.array([r[split][key] for r in runs])
                spread = values.std(ddof=1) if len(values) > 1 else 0.0
                return f"{values.mean():.2f} ± {spread:.2f}"

            delta = np.array([r["test"]["weighted_f1"] for r in runs]) - full
            lines.append(f"| {variant} | {cell('test', 'weighted_f1')} | {cell('test', 'accuracy')} | "
                         f"{cell('test', 'macro_f1')} | {cell('dev', 'weighted_f1')} | {delta.mean():+.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/ablation", help="where the run directories go")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--presets", nargs="+", default=None, help=f"synthetic presets (default: {list(PRESETS)})")
    parser.add_argument("--datasets", nargs="+", metavar="NAME=CONFIG@PATH", default=[],
                        help="real datasets instead: a name, a config file and a dataset path")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="one seed, tiny data, 2 epochs: pipeline check")
    parser.add_argument("--write", metavar="FILE.md", help="write the table (with machine and command) here")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for every cell")
    args = parser.parse_args()
    extra = list(args.overrides)
    seeds = args.seeds
    if args.quick:
        extra, seeds = QUICK + extra, seeds[:1]
    for name in [k for k in VARIANTS if k not in args.variants and k != "full ReDiFu"]:
        del VARIANTS[name]
    for spec in args.datasets:
        name, _, value = spec.partition("=")
        PRESETS[name] = value
    args.presets = args.presets or ([s.partition("=")[0] for s in args.datasets] or ["iemocap", "meld"])
    output = Path(args.output)
    started = time.perf_counter()
    results = {}
    for preset in args.presets:
        for variant in VARIANTS:
            for seed in seeds:
                results[(preset, variant, seed)] = run_cell(preset, variant, seed, output, extra)
    text = table(results, args.presets, seeds)
    header = (
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; seeds {seeds}; total {time.perf_counter() - started:.0f} s.\n"
        f"Command: `python {' '.join(sys.argv)}`\n"
    )
    print(header + text)
    if args.write:
        Path(args.write).write_text(header + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
