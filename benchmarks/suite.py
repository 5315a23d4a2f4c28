"""The whole benchmark suite of issue 6 in one command; writes docs/BENCHMARKS.md.

Runs, at the authors' settings on the synthetic presets shaped like the real corpora:

1. training throughput and memory per epoch, MELD settings (``configs/meld.yaml``) and IEMOCAP
   settings (``configs/iemocap.yaml``), with the data-loading share (:mod:`train_speed`);
2. one dialogue of N utterances, forward + backward, IEMOCAP settings, N = 25 .. 5,000
   (:mod:`scaling`);
3. inference latency of a 20-utterance dialogue (IEMOCAP settings) and batch prediction of
   2,610 utterances (MELD settings, the size of MELD's test split) (:mod:`latency`);
4. a torch.profiler breakdown of a training step per component (:mod:`profile_components`);

then writes a Markdown report with every goal of the issue beside its measured figure and the
authors' figures. Timing figures need an otherwise idle machine.

    python benchmarks/suite.py --write docs/BENCHMARKS.md        # a few minutes on 2 cores
    python benchmarks/suite.py --quick --write /tmp/BENCHMARKS.md  # smoke test: tiny sizes, seconds

On a CUDA machine, ``--device cuda --json gpu.json`` measures the same stages there (bfloat16
training in place of the glibc-tuned CPU run, training mode at every N); ``--gpu-results
gpu.json`` then adds those figures as a column and a section of the CPU report. ``--json``
saves the results after each stage; ``--from-json`` renders saved results without measuring.
The committed report is rendered from ``docs/benchmarks_cpu.json`` and ``docs/benchmarks_gpu.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import bench_common as bc  # noqa: E402
import latency  # noqa: E402
import profile_components  # noqa: E402
import scaling  # noqa: E402
import train_speed  # noqa: E402

from redifu.files import write_json_atomic, write_text_atomic  # noqa: E402

def _config(name: str) -> str:
    path = ROOT / "configs" / name
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


IEMOCAP = _config("iemocap.yaml")
MELD = _config("meld.yaml")

# The authors' code on the same machine (2 cores, torch 2.13 CPU, 2 threads), from issue 6.
AUTHORS = {
    "meld_train_utt_s": 200, "meld_eval_utt_s": 550, "meld_peak_gb": "7.4 after 2 epochs, still climbing",
    "iemocap_train_utt_s": 40, "iemocap_eval_utt_s": 110, "iemocap_peak_gb": 17.5,
    "scaling": {100: (1.4, 1.1), 200: (4.3, 2.2), 400: (15, 6.5), 800: (87, 19.8)},
    "latency_ms": 62, "latency_autograd_ms": 82,
}

# Quick mode: tiny data and model, so the whole pipeline runs in seconds (no figure is meaningful).
QUICK_OVERRIDES = ["model.hidden_size=16", "model.num_heads=2", "training.batch_size=4",
                   "data.synthetic.train_dialogues=6", "data.synthetic.dev_dialogues=2",
                   "data.synthetic.test_dialogues=4"]


SUITE_LENGTHS = (25, 50, 100, 200, 400, 800, 1600, 5000)
KEEP_MARKER = "<!-- Below this line: figures measured outside the suite, kept as they are by benchmarks/suite.py. -->"


def run_all(*, quick: bool, device: str, max_length: int = 5000, json_path: str | None = None) -> dict[str, Any]:
    """Run every stage; with ``json_path``, the results so far are saved after each stage (a run cut
    short by a time limit keeps what it measured)."""
    overrides = QUICK_OVERRIDES if quick else []
    cuda = bc.pick_device(device).type == "cuda"
    results: dict[str, Any] = {"machine": bc.machine(), "quick": quick, "load_start": os.getloadavg()[0]}
    started = time.perf_counter()

    def stage(name: str, fn, *args, **kwargs):
        print(f"[suite] {name} ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        # Quick mode is a smoke test of the pipeline: no timing to protect, so no process start-ups.
        results[name] = fn(*args, **kwargs) if quick else in_fresh_process(fn, *args, **kwargs)
        print(f"[suite] {name} done in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        if json_path:
            save_json(json_path, results)

    stage("train_meld", train_speed.measure_training, MELD, overrides, epochs=2, device=device)
    # Four epochs here: two are too few to tell a creeping peak from the first epoch's warm-up.
    stage("train_iemocap", train_speed.measure_training, IEMOCAP, overrides, epochs=2 if quick else 4, device=device)
    if cuda:  # glibc's settings mean nothing to GPU memory; bfloat16 autocast is the GPU's lever
        stage("train_iemocap_bf16", train_speed.measure_training, IEMOCAP, [*overrides, *BF16_OVERRIDES],
              epochs=2, device=device)
    else:
        stage("train_iemocap_lean", lean_training, overrides, epochs=1 if quick else 2, device=device)
        stage("train_iemocap_fast_dropout", train_speed.measure_training, IEMOCAP, [*overrides, *FAST_DROPOUT],
              epochs=2, device=device)
    lengths = (8, 16, 32) if quick else [n for n in SUITE_LENGTHS if n <= max_length]
    stage("scaling", scaling.measure_scaling, IEMOCAP, overrides, lengths=lengths, repeats=1 if quick else 3,
          train_max=max(lengths) if cuda else 800, device=device)
    if not cuda:  # the opt-in CPU dropout masks at the longest training-mode length
        stage("scaling_fast_dropout", scaling.measure_scaling, IEMOCAP, [*overrides, *FAST_DROPOUT],
              lengths=[min(800, max(lengths))], repeats=1, device=device)
    stage("latency", latency.measure_latency, IEMOCAP, overrides, repeats=3 if quick else 50, device=device)
    stage("batch", latency.measure_batch_prediction, MELD, overrides, utterances=20 if quick else 2610,
          repeats=1 if quick else 3, device=device)
    stage("profile", profile_components.measure_profile, IEMOCAP, overrides, steps=1 if quick else 3,
          device=device)
    results["seconds"] = time.perf_counter() - started
    results["load_end"] = os.getloadavg()[0]
    results["measured_at"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if json_path:
        save_json(json_path, results)
    return results


def _with_threads(threads: int, fn, args, kwargs):
    torch.set_num_threads(threads)
    return fn(*args, **kwargs)


def in_fresh_process(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a new Python process with this one's torch threads, so each stage
    is measured as its own command would be: no heap, allocator or thread-pool state left by the
    stages before it (a 5,000-utterance step leaves the heap fragmented, which slows a later
    20-utterance latency test by about a third)."""
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_with_threads, torch.get_num_threads(), fn, args, kwargs).result()


def save_json(path: str | Path, data: Any) -> None:
    write_json_atomic(Path(path), data)


BF16_OVERRIDES = ["training.precision=bf16"]
FAST_DROPOUT = ["training.fast_dropout=true"]
LEAN_ENV = {"MALLOC_MMAP_THRESHOLD_": str(256 << 10), "MALLOC_TRIM_THRESHOLD_": str(256 << 10)}
LEAN_OVERRIDES = ["training.activation_checkpointing=true"]


def lean_command(overrides: Sequence[str], epochs: int) -> list[str]:
    return [sys.executable, str(HERE / "train_speed.py"), "--config", IEMOCAP, "--epochs", str(epochs),
            "--threads", str(torch.get_num_threads()), *LEAN_OVERRIDES, *overrides]


def lean_training(overrides: Sequence[str], *, epochs: int, device: str) -> dict[str, Any]:
    """IEMOCAP settings with activation checkpointing and glibc told to return large blocks at
    once (environment variables, so in a fresh process): the lean way to train."""
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "lean.json"
        command = lean_command(overrides, epochs) + ["--device", device, "--json", str(out)]
        subprocess.run(command, check=True, env={**os.environ, **LEAN_ENV}, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**not met**")


def _peak_mb(result: dict[str, Any]) -> tuple[float, str]:
    """A run's memory high-water mark: the GPU allocator's on CUDA, else the process's RSS."""
    gpu = [e["cuda_peak_mb"] for e in result.get("epochs", [result]) if e.get("cuda_peak_mb") is not None]
    if gpu:
        return max(gpu), "GPU memory peak"
    return result["peak_rss_mb"] or 0.0, "peak RSS"


def goals(results: dict[str, Any]) -> list[list[Any]]:
    meld, iemocap, lean = results["train_meld"], results["train_iemocap"], results.get("train_iemocap_lean")
    rows_by_n = {r["length"]: r for r in results["scaling"]["rows"]}
    epochs = iemocap["epochs"]
    peaks = [_peak_mb(e)[0] for e in epochs]
    flat = None if len(peaks) < 2 else max(peaks[1:]) <= 1.05 * peaks[0]
    iemocap_peak, what = _peak_mb(iemocap)
    rows = [
        ["training, MELD settings: >= 3x the authors' utterances/s", f"{AUTHORS['meld_train_utt_s']} utt/s",
         f"{meld['train_utt_per_s']:.0f} utt/s ({meld['train_utt_per_s'] / AUTHORS['meld_train_utt_s']:.1f}x)",
         _met(meld["train_utt_per_s"] >= 3 * AUTHORS["meld_train_utt_s"])],
        ["training, IEMOCAP settings: >= 3x the authors' utterances/s", f"{AUTHORS['iemocap_train_utt_s']} utt/s",
         f"{iemocap['train_utt_per_s']:.0f} utt/s "
         f"({iemocap['train_utt_per_s'] / AUTHORS['iemocap_train_utt_s']:.1f}x)",
         _met(iemocap["train_utt_per_s"] >= 3 * AUTHORS["iemocap_train_utt_s"])],
        ["peak memory of a full IEMOCAP-settings epoch < 1.5 GB", f"{AUTHORS['iemocap_peak_gb']} GB",
         f"{iemocap_peak / 1024:.2f} GB {what}", _met(iemocap_peak < 1536)],
    ]
    fast = results.get("train_iemocap_fast_dropout")
    if fast is not None:
        rows.append(["the same training with `training.fast_dropout=true` (opt-in: other dropout draws, same "
                     "distribution)", "", f"{fast['train_utt_per_s']:.0f} utt/s "
                     f"({fast['train_utt_per_s'] / AUTHORS['iemocap_train_utt_s']:.1f}x)", "n/a (opt-in)"])
    if lean is not None:
        rows.append(["the same with `training.activation_checkpointing=true` and glibc returning large blocks at "
                     "once (`MALLOC_MMAP_THRESHOLD_=262144 MALLOC_TRIM_THRESHOLD_=262144`)", "",
                     f"{(lean['peak_rss_mb'] or 0) / 1024:.2f} GB peak RSS, {lean['train_utt_per_s']:.0f} utt/s",
                     _met((lean["peak_rss_mb"] or 0) < 1536)])
    # The host heap says nothing about GPU memory: shown for CPU runs only.
    heap = [e["malloc_in_use_mb"] for e in epochs if e.get("malloc_in_use_mb") is not None] if what == "peak RSS" else []
    rows.append(["memory flat from epoch to epoch (later epochs' peak within 5% of the first)",
                 "climbing (MELD: 7.4 GB after 2 epochs)",
                 " / ".join(f"{p / 1024:.2f}" for p in peaks) + f" GB in {len(peaks)} epochs"
                 + (f" (live heap at each epoch's end: {min(heap):.0f}-{max(heap):.0f} MB)" if heap else ""),
                 _met(flat)])
    if 800 in rows_by_n:
        train, plain = rows_by_n[800]["train"], rows_by_n[800]["no_dropout"]
        if train is not None:
            rows.append(["one dialogue, N=800, forward + backward, training mode (dropout on): < 2 s", "87 s",
                         f"{train['seconds']:.2f} s", _met(train["seconds"] < 2)])
            memory, what = _peak_mb(train)
            rows.append(["the same, < 1 GB", "19.8 GB", f"{memory / 1024:.2f} GB {what}", _met(memory < 1024)])
        fast_rows = {r["length"]: r for r in results.get("scaling_fast_dropout", {}).get("rows", [])}
        if fast_rows.get(800, {}).get("train"):
            entry = fast_rows[800]["train"]
            memory, what = _peak_mb(entry)
            rows.append(["the same with `training.fast_dropout=true`: < 2 s and < 1 GB", "",
                         f"{entry['seconds']:.2f} s, {memory / 1024:.2f} GB {what}",
                         _met(entry["seconds"] < 2 and memory < 1024)])
        memory, what = _peak_mb(plain)
        rows.append(["one dialogue, N=800, forward + backward, dropout off: < 2 s and < 1 GB", "n/a",
                     f"{plain['seconds']:.2f} s, {memory / 1024:.2f} GB {what}",
                     _met(plain["seconds"] < 2 and memory < 1024)])
    if 5000 in rows_by_n and rows_by_n[5000]["no_dropout"].get("out_of_memory"):
        rows.append(["one dialogue, N=5,000 completes (dropout off), memory linear in N",
                     "n/a (N=800 already 19.8 GB)", "out of memory", _met(False)])
    elif 5000 in rows_by_n:
        big = rows_by_n[5000]["no_dropout"]
        mid, small = rows_by_n.get(800), rows_by_n.get(100)
        big_mb, what = _peak_mb(big)
        text, linear = f"completes in {big['seconds']:.0f} s, {big_mb / 1024:.2f} GB {what}", None
        if mid and small:
            low, high = _peak_mb(small["no_dropout"])[0], _peak_mb(mid["no_dropout"])[0]
            slope_low = (high - low) / 700
            slope_high = (big_mb - high) / 4200
            linear = slope_high <= 1.5 * max(slope_low, 1e-9)
            text += (f"; {what} grows {slope_low * 1024:.0f} KB per utterance over N=100..800 and "
                     f"{slope_high * 1024:.0f} KB per utterance over N=800..5,000")
        rows.append(["one dialogue, N=5,000 completes (dropout off), memory linear in N",
                     "n/a (N=800 already 19.8 GB)", text, _met(linear)])
    lat, batch = results["latency"], results["batch"]
    rows.append(["inference, one 20-utterance dialogue, IEMOCAP settings, autograd off: < 15 ms median",
                  f"{AUTHORS['latency_ms']} ms", f"{lat['no_grad']['median_ms']:.1f} ms"
                  + (f" (weights in bfloat16: {lat['no_grad_bf16']['median_ms']:.1f} ms)" if "no_grad_bf16" in lat else ""),
                  _met(lat["no_grad"]["median_ms"] < 15)])
    rows.append([f"batch prediction of {batch['utterances']:,} utterances (MELD test size), MELD settings: < 2 s",
                 "n/a", f"{batch['seconds']:.2f} s ({batch['utt_per_s']:.0f} utt/s)", _met(batch["seconds"] < 2)])
    worst = max(meld["data_share"], iemocap["data_share"])
    rows.append(["data loading never the bottleneck (share of an epoch)", "n/a",
                 f"{100 * meld['data_share']:.1f}% (MELD), {100 * iemocap['data_share']:.1f}% (IEMOCAP)",
                 _met(worst < 0.1)])
    return rows


def goals_table(results: dict[str, Any], gpu: dict[str, Any] | None) -> str:
    """The goals with the CPU figures and verdicts; a GPU run's figures in one more column."""
    rows = goals(results)
    if gpu is None:
        return bc.table(["goal", "authors' code", "redifu", "verdict"], rows)
    on_gpu = {row[0]: row[2] for row in goals(gpu)}
    return bc.table(["goal", "authors' code", "redifu (CPU)", "verdict (CPU)", f"redifu on {gpu['machine']['device']}"],
                    [[*row, on_gpu.get(row[0], "")] for row in rows])


def gpu_section(gpu: dict[str, Any], source: str) -> list[str]:
    """The figures of a suite run on a CUDA GPU (``--gpu-results``)."""
    m = gpu["machine"]
    bf16 = gpu.get("train_iemocap_bf16")
    return [
        f"## On a GPU: {m['device']}",
        "",
        "```bash",
        f"python benchmarks/suite.py --device cuda --json {source}   # on the GPU machine",
        "```",
        "",
        f"Measured {gpu.get('measured_at', '')} on {m['arch']}, {m['cores']} CPU cores, torch {m['torch']}, "
        f"device {m['device']}; the whole "
        f"suite took {gpu['seconds'] / 60:.1f} minutes. The same scripts and settings as above; memory is the "
        "CUDA allocator's high-water mark (`torch.cuda.max_memory_allocated`), float32 (no TF32) unless "
        "the row says bf16. The goals above are set for the 2-core CPU machine; the GPU column is for "
        "comparison. Training mode on the GPU uses PyTorch's fused attention kernels with dropout, so the "
        "scaling sweep runs training mode at every N.",
        "",
        "### Training, MELD settings",
        "",
        train_speed.report(gpu["train_meld"]),
        "",
        "### Training, IEMOCAP settings",
        "",
        train_speed.report(gpu["train_iemocap"]),
        "",
        *(["### Training, IEMOCAP settings, `training.precision=bf16`", "", train_speed.report(bf16), ""]
          if bf16 else []),
        "### One dialogue of N utterances",
        "",
        scaling.report(gpu["scaling"]),
        "",
        "### Inference latency and batch prediction",
        "",
        latency.report(gpu["latency"], gpu["batch"]),
        "",
        *(["### Profile", "", profile_components.report(gpu["profile"]), ""] if "profile" in gpu else []),
    ]


def _lean_section(results: dict[str, Any]) -> list[str]:
    if "train_iemocap_lean" not in results:
        return []
    return [
        "### IEMOCAP settings, lean",
        "",
        "Activation checkpointing (the denoiser, graph and fusion layers recompute their activations in "
        "backward; same results, dropout masks included) and glibc's allocator told to serve blocks of 256 KiB "
        "and more with mmap and return them at once (by default it raises that threshold as large blocks "
        "are freed, then keeps freed memory in its heap: the RSS well above the heap in use in the tables "
        "above).",
        "",
        "```bash",
        "MALLOC_MMAP_THRESHOLD_=262144 MALLOC_TRIM_THRESHOLD_=262144 python benchmarks/train_speed.py "
        "--config configs/iemocap.yaml --epochs 2 training.activation_checkpointing=true",
        "```",
        "",
        train_speed.report(results["train_iemocap_lean"]),
        "",
    ]


def render(results: dict[str, Any], *, command: str, gpu: dict[str, Any] | None = None,
           gpu_source: str = "") -> str:
    m = results["machine"]
    meld, iemocap = results["train_meld"], results["train_iemocap"]
    when = results.get("measured_at") or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "# Benchmarks",
        "",
        "Written by `benchmarks/suite.py` from its own measurements; do not edit by hand. "
        + ("**Quick mode: tiny sizes, a smoke test; none of these figures means anything.**" if results["quick"]
           else ""),
        "",
        f"Measured {when} on {m['arch']}, {m['cores']} CPU cores, torch {m['torch']}, {m['threads']} threads, "
        f"device {m['device']}. The whole suite took {results['seconds'] / 60:.1f} minutes. "
        f"Load average (1 min) {results['load_start']:.1f} at the start, {results['load_end']:.1f} at the end"
        + (" — **the machine was busy with other work: timings are slower than on an idle machine**"
           if results["load_end"] > (m["threads"] or 1) + 0.5 else "")
        + " (the suite's own threads account for a load of about its thread count; the 1-minute "
        "average lags, so the start figure still shows work that ended just before).",
        "",
        "```bash",
        command,
        "```",
        "",
        "Data: the synthetic presets shaped like the real corpora (real feature sizes; IEMOCAP-shaped: "
        "108 training dialogues, 48 utterances on average; MELD-shaped: 1,039 training dialogues, "
        "9.6 utterances on average), see docs/SYNTHETIC.md. Settings: the authors' (configs/iemocap.yaml: "
        "hidden 512, 64 heads, window 20, dropout 0.5; configs/meld.yaml: hidden 256, 16 heads, window 25, "
        "dropout 0.6; batch 16 dialogues), full model (dual denoiser, graph inside and across modalities, "
        "text-guided fusion). The authors' figures are those issue 6 measured for their code on the same "
        "machine kind (2 cores, torch 2.13 CPU, 2 threads). Memory is the resident set's high-water mark "
        "(RSS, the whole process: Python, torch, data, model, optimiser state, activations).",
        "",
        "## Goals",
        "",
        goals_table(results, gpu),
        "",
        "For comparison, evaluation throughput (dev split, eval mode, no autograd): "
        f"MELD settings {meld['eval_utt_per_s']:.0f} utt/s (authors {AUTHORS['meld_eval_utt_s']}), "
        f"IEMOCAP settings {iemocap['eval_utt_per_s']:.0f} utt/s (authors {AUTHORS['iemocap_eval_utt_s']}).",
        "",
        "## Training throughput and memory per epoch",
        "",
        "```bash",
        "python benchmarks/train_speed.py --config configs/meld.yaml --epochs 2",
        "python benchmarks/train_speed.py --config configs/iemocap.yaml --epochs 4",
        "```",
        "",
        "Forward, loss (with auxiliary losses), backward, gradient clipping and AdamW over the whole training "
        "split in shuffled batches of 16 dialogues, then one pass over dev in eval mode. \"data share\" is "
        "the time spent waiting for batches (collation in the main process). Per epoch: the RSS high-water "
        "mark of that epoch, the RSS at its end and the heap glibc's malloc has handed out (live tensors and "
        "everything else); RSS above the heap is allocator fragmentation or freed memory not yet returned.",
        "",
        "### MELD settings",
        "",
        train_speed.report(meld),
        "",
        "### IEMOCAP settings",
        "",
        train_speed.report(iemocap),
        "",
        *_lean_section(results),
        "## One dialogue of N utterances (scaling)",
        "",
        "```bash",
        "python benchmarks/scaling.py --config configs/iemocap.yaml --lengths 25 50 100 200 400 800 1600 5000",
        "```",
        "",
        "Forward + loss + backward, one dialogue, two alternating speakers, in two modes: *train* (training "
        "mode, dropout on, N up to 800) and *no dropout* (eval mode with autograd on, every N). Peak RSS is "
        "measured for each N alone. The graph window is fixed, so the graph is linear in N; the attention "
        "maps of the denoiser and the fusion are never stored whole (fused flash attention without dropout, "
        "`redifu.nn.kernels.attention` with dropout), so memory grows linearly in N while compute "
        "in those attentions grows with N^2. In training mode the attention dropout dominates: PyTorch's "
        "CPU dropout draws one number per element of every (64, N, N) map from a serial generator (14 maps "
        "per step, and again in backward to recompute them), which keeping results equal to PyTorch's "
        "math path for the same seed requires. Authors' code (issue 6): "
        + ", ".join(f"N={n}: {s} s, {g} GB" for n, (s, g) in AUTHORS["scaling"].items()) + ".",
        "",
        scaling.report(results["scaling"]),
        "",
        "## Inference latency and batch prediction",
        "",
        "```bash",
        "python benchmarks/latency.py",
        "```",
        "",
        latency.report(results["latency"], results["batch"]),
        "",
        f"Authors' code: {AUTHORS['latency_ms']} ms median with autograd off, {AUTHORS['latency_autograd_ms']} ms "
        "as its training script evaluates (autograd on).",
        "",
        "## Where the time goes (profile)",
        "",
        "```bash",
        "python benchmarks/profile_components.py --config configs/iemocap.yaml --steps 3",
        "```",
        "",
        profile_components.report(results["profile"]),
        "",
        *(gpu_section(gpu, gpu_source) if gpu else []),
        "## What keeps memory linear",
        "",
        "- Attention with dropout in training: PyTorch has no fused CPU kernel for attention dropout, and its "
        "math path keeps about three (B, H, N, N) float tensors per attention call for backward (at 64 heads "
        "most of a training step's memory, growing with N^2). `ChunkedDropoutAttention` computes the same "
        "result, with the same dropout mask for the same seed, in chunks of about 4M elements and recomputes "
        "each chunk in backward, keeping only q, k, v. Without dropout (evaluation) PyTorch's fused "
        "flash-attention kernel runs.",
        "- The relational graph attention never builds an (E, out) or N x N tensor: values are computed per "
        "distinct (node, relation) pair, softmax and the weighted sum are fused autograd functions keeping "
        "only the (E, H) weights.",
        "- Edges and batches are built with vectorised tensor code (no Python loop over utterances).",
        "- Evaluation and prediction run without autograd. Without dropout, the dual differential attention "
        "(values twice as wide as queries, which PyTorch's fused kernels do not take) attends once per half "
        "of the values, so the fused kernel runs instead of the math path that materialises the map.",
        "- Opt-in: `training.activation_checkpointing=true` (recompute each layer's activations in backward) "
        "and glibc's `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` (return large blocks to the system "
        "at once) for the lowest peak, at some speed (see the lean table).",
        "",
        "## Optional accelerations",
        "",
        "- `training.precision=bf16` (short for Lightning's `bf16-mixed`): bfloat16 autocast on the CPU and "
        "on CUDA; results within bfloat16 tolerance of float32 (tests/test_acceleration.py).",
        "- `training.compile=true`: `torch.compile` of the model (same parameters; compilation takes minutes "
        "on 2 cores); equal to eager within float tolerance (a slow test).",
        "- Fused attention: PyTorch's `scaled_dot_product_attention` wherever no dropout applies.",
        "- `training.fast_dropout=true` (CPU): attention-dropout masks drawn four to a 64-bit random word "
        "(`redifu.nn.kernels.dropout_masks.fast_keep_mask`, 16 bits per element, keep probability "
        "rounded to 2^-16) instead of PyTorch's one serial Bernoulli draw per element, about 8 times faster "
        "to draw. Same distribution, other draws: a seed gives other results than without it, so it is off "
        "by default and the published tables use PyTorch's draws. Its rows in the goals table measure it.",
        "",
        "Other figures (prediction through `redifu predict` and streaming memory): "
        "`python benchmarks/predict_throughput.py`, see its docstring.",
        "",
    ]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", help="write the Markdown report here (e.g. docs/BENCHMARKS.md)")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny sizes, one thread, seconds")
    parser.add_argument("--threads", type=int, help="torch threads (default 2; 1 with --quick)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--max-length", type=int, default=5000,
                        help="longest dialogue of the scaling sweep (N=5,000 takes a few minutes on 2 cores)")
    parser.add_argument("--json", help="save the measured results here (after each stage)")
    parser.add_argument("--from-json", help="render saved results (--json) instead of measuring")
    parser.add_argument("--gpu-results", help="a CUDA run's --json results: adds a GPU column and section")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or (1 if args.quick else 2))
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
    else:
        results = run_all(quick=args.quick, device=args.device, max_length=args.max_length, json_path=args.json)
    gpu = json.loads(Path(args.gpu_results).read_text()) if args.gpu_results else None
    command = "python benchmarks/suite.py" + (" --quick" if results["quick"] else "") + (
        f" --json {args.json or args.from_json}" if args.json or args.from_json else "") + (
        f" --gpu-results {args.gpu_results}" if args.gpu_results else "") + (
        f" --write {args.write}" if args.write else "")
    text = render(results, command=command, gpu=gpu, gpu_source=args.gpu_results or "")
    print(text)
    if args.write:
        target = Path(args.write)
        previous = target.read_text() if target.is_file() else ""
        if KEEP_MARKER in previous:  # sections measured elsewhere (e.g. predict_throughput.py) stay
            text = text.rstrip("\n") + "\n\n" + previous[previous.index(KEEP_MARKER):]
        write_text_atomic(target, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
