"""Shared pieces of the benchmark scripts: machine description, memory probes, models, tables.

Memory figures:

* peak RSS: the resident set's high-water mark (``VmHWM``). :func:`reset_peak_rss` resets it
  (Linux ``/proc/self/clear_refs``), so a figure can be per epoch or per dialogue length;
* malloc in use: bytes glibc's allocator has handed out and not taken back (``mallinfo2``),
  i.e. live tensors plus everything else the process holds on the heap; RSS well above it
  means allocator fragmentation or freed memory not yet returned to the system;
* on CUDA, the torch allocator's peak (``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from redifu.config import ExperimentConfig, load_config
from redifu.data.batching import feature_statistics
from redifu.data.dialogue import DialogueCorpus
from redifu.data.loading import load_corpus
from redifu.files import write_json_atomic
from redifu.model import ReDiFu, ReDiFuConfig

MIB = 1024 * 1024

_libc = None
try:
    _libc = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: malloc figures are skipped
    pass


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def machine() -> dict[str, Any]:
    """The machine a figure was measured on."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"arch": platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": device}


def machine_line(info: dict[str, Any] | None = None) -> str:
    info = info or machine()
    return (f"machine: {info['arch']}, {info['cores']} cores, torch {info['torch']}, {info['threads']} threads, "
            f"device {info['device']}")


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _status_kib(key: str) -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """Current resident set size in MiB."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def peak_rss_mb() -> float | None:
    """Resident set high-water mark in MiB since start or the last :func:`reset_peak_rss`."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib / 1024


def reset_peak_rss() -> None:
    """Give freed heap back to the system and restart the RSS high-water mark (Linux)."""
    if _libc is not None:
        _libc.malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def malloc_in_use_mb() -> float | None:
    """Bytes glibc's malloc has handed out and not taken back, in MiB."""
    if _libc is None or not hasattr(_libc, "mallinfo2"):
        return None
    _libc.mallinfo2.restype = _MallInfo2
    info = _libc.mallinfo2()
    return (info.uordblks + info.hblkhd) / MIB


def cuda_peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


@dataclass
class Setup:
    """A config, its corpus and a model built for it (feature statistics from train)."""

    config: ExperimentConfig
    corpus: DialogueCorpus
    model_config: ReDiFuConfig
    model: ReDiFu


def build(config_path: str | None, overrides: Sequence[str] = (), *, seed: int = 0,
          device: torch.device = torch.device("cpu")) -> Setup:
    config = load_config(config_path, overrides)
    corpus = load_corpus(config.data)
    meta = corpus.metadata
    model_config = config.model_config(modality_dims=meta.modality_dims, num_classes=meta.num_classes,
                                       num_speakers=meta.num_speakers)
    torch.manual_seed(seed)
    model = ReDiFu(model_config, activation_checkpointing=config.training.activation_checkpointing,
                   fast_dropout=config.training.fast_dropout)
    model.set_feature_statistics(feature_statistics(corpus.splits["train"], model_config.modalities))
    return Setup(config=config, corpus=corpus, model_config=model_config, model=model.to(device))


def settings_line(setup: Setup) -> str:
    m, t = setup.model_config, setup.config.training
    return (f"settings: hidden {m.hidden_size}, heads {m.num_heads}, window {m.window}, dropout {m.dropout}, "
            f"denoiser {m.denoiser}, graph {m.graph}, fusion {m.fusion}; batch {t.batch_size} dialogues; "
            f"{setup.model.num_parameters():,} parameters; data {setup.corpus.metadata.name}")


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if abs(value) < 10 and value != 0:
            return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
        return f"{value:,.{digits if abs(value) < 1000 else 0}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark script shares: threads, device, a JSON copy, config overrides."""
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--json", help="also write the result as JSON to this file")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")


def finish(args: argparse.Namespace, result: Any, text: str) -> int:
    """Print a script's report and, with ``--json``, write its result."""
    print(text)
    if args.json:
        write_json_atomic(args.json, result)
    return 0
