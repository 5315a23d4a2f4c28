"""Activation checkpointing of a layer, an opt-in memory saving for training.

A layer run through :func:`run_layer` with ``checkpointed=True`` keeps only its inputs for
backward and recomputes its activations there (Chen et al., "Training Deep Nets with Sublinear
Memory Cost", 2016), at the price of one more forward pass of that layer. The random-number
state is restored for the recomputation, so dropout draws the same masks and the results equal
those without checkpointing. The layers that use it (``DifferentialDenoiser``,
``RelationGraph``, ``SymmetricFusion``, ``TextGuidedFusion``) take an
``activation_checkpointing`` constructor argument, which ``ReDiFu`` passes down from the
training code's ``training.activation_checkpointing``.

Why it exists (docs/BENCHMARKS.md, configs/iemocap.yaml, 2 CPU cores): the "lean" row, with
activation checkpointing *and* glibc told to return blocks of 256 KiB and more at once, peaks
at 1.57 GB RSS over an epoch at 68 utterances/s, against 3.58 GB at 161 utterances/s by
default. The suite has no row for checkpointing alone; outside the suite, the allocator setting
alone (``MALLOC_MMAP_THRESHOLD_=1048576``, no checkpointing) gave flat peaks of 2.35-2.38 GB at
104 utterances/s.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.checkpoint import checkpoint

__all__ = ["run_layer"]


def run_layer(layer: Callable[..., Any], *args: Any, checkpointed: bool, **kwargs: Any) -> Any:
    """``layer(*args, **kwargs)``, checkpointed when ``checkpointed`` is set and autograd
    records (pass ``checkpointed=option and self.training`` from the calling module)."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(layer, *args, use_reentrant=False, preserve_rng_state=True, **kwargs)
    return layer(*args, **kwargs)
