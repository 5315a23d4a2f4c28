"""Activation checkpointing of the model's layers, an opt-in memory saving for training.

A layer run through :func:`run_layer` keeps only its inputs for backward and recomputes its
activations there (Chen et al., "Training Deep Nets with Sublinear Memory Cost", 2016), at the
price of one more forward pass of that layer. The random-number state is restored for the
recomputation, so dropout draws the same masks and the results equal those without
checkpointing. Modules that support it carry an ``activation_checkpointing`` flag, set for the
whole model by :meth:`redifu.model.ReDiFu.set_activation_checkpointing`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def run_layer(owner: nn.Module, layer: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``layer(*args, **kwargs)``, checkpointed when ``owner.activation_checkpointing`` is set
    and autograd records a training step."""
    if getattr(owner, "activation_checkpointing", False) and owner.training and torch.is_grad_enabled():
        return checkpoint(layer, *args, use_reentrant=False, preserve_rng_state=True, **kwargs)
    return layer(*args, **kwargs)
