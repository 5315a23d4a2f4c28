"""The Lightning training system around the plain :class:`~redifu.model.ReDiFu` module.

The system owns what is not the model: the loss, the optimiser and schedule, dev metrics for
model selection, logging. Devices, DDP, checkpoint/resume and early stopping come from
Lightning.
"""

from __future__ import annotations

import contextlib
import math
import random
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from redifu.config import TrainingConfig
from redifu.data.batching import DialogueBatch, DialogueDataset, collate_dialogues
from redifu.data.dialogue import IGNORE_LABEL, Dialogue
from redifu.model import ReDiFu, ReDiFuConfig
from redifu.training.loss import redifu_loss

DEV_METRIC = "dev/weighted_f1"


def seed_for_step(seed: int, step: int, rank: int = 0) -> None:
    """Seed python, numpy and torch from ``(seed, step, rank)``."""
    derived = int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices, none on vectors (biases, norms, lambdas)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (no_decay if parameter.ndim < 2 or "norm" in name else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lightning_precision(precision: str) -> str:
    """Lightning's name for ``training.precision`` (``bf16`` is short for ``bf16-mixed``)."""
    return {"bf16": "bf16-mixed", "32": "32-true", "fp32": "32-true"}.get(precision, precision)


def autocast_context(precision: str, device: torch.device | str):
    """The autocast context that ``training.precision`` means outside Lightning (benchmarks, tests)."""
    precision = lightning_precision(precision)
    device_type = torch.device(device).type
    if precision == "bf16-mixed":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device_type, dtype=torch.float16)
    if precision in ("32-true", "64-true"):
        return contextlib.nullcontext()
    raise ValueError(f"training.precision: no autocast equivalent for {precision!r}")


class EpochShuffle(Sampler[int]):
    """A random order of the dialogues that depends on ``(seed, epoch)`` only.

    Lightning calls :meth:`set_epoch` before each epoch, so a resumed run sees exactly the
    order an uninterrupted run would. (Under DDP, Lightning's DistributedSampler does the same.)
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


class DialogueDataModule(L.LightningDataModule):
    """Train and dev loaders over in-memory dialogues (the test split never enters training)."""

    def __init__(
        self,
        *,
        train: Sequence[Dialogue],
        dev: Sequence[Dialogue],
        modalities: Sequence[str],
        batch_size: int,
        eval_batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
        distributed: bool = False,
    ) -> None:
        super().__init__()
        self.seed, self.distributed = seed, distributed
        self.train_set = DialogueDataset(train, modalities)
        self.dev_set = DialogueDataset(dev, modalities)
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers

    def train_dataloader(self) -> DataLoader:
        # Under DDP, Lightning swaps in a DistributedSampler (seeded by epoch) for shuffle=True.
        sampler = None if self.distributed else EpochShuffle(len(self.train_set), self.seed)
        return DataLoader(
            self.train_set, batch_size=self.batch_size, shuffle=self.distributed, sampler=sampler,
            collate_fn=collate_dialogues,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.dev_set, batch_size=self.eval_batch_size, shuffle=False, collate_fn=collate_dialogues,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
        )

    def transfer_batch_to_device(self, batch: DialogueBatch, device: torch.device, dataloader_idx: int) -> DialogueBatch:
        return batch.to(device)


class ReDiFuSystem(L.LightningModule):
    """Trains a :class:`ReDiFu` with cross-entropy (+ auxiliary losses), AdamW and a cosine schedule.

    Args:
        model_config: The model's config as a dict (saved in Lightning checkpoints for resume).
        training: The training section.
        class_weights: Optional cross-entropy class weights.
        steps_per_epoch: Optimiser steps per epoch (for the schedule).
    """

    def __init__(
        self,
        *,
        model_config: dict[str, Any],
        training: dict[str, Any],
        class_weights: list[float] | None = None,
        steps_per_epoch: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.training_config = TrainingConfig(**training)
        self.model = ReDiFu(ReDiFuConfig.from_dict(model_config),
                            activation_checkpointing=self.training_config.activation_checkpointing,
                            fast_dropout=self.training_config.fast_dropout)
        self.steps_per_epoch = max(1, steps_per_epoch)
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weights, persistent=False)
        num_classes = self.model.config.num_classes
        self.dev_f1 = MulticlassF1Score(num_classes, average="weighted", ignore_index=IGNORE_LABEL)
        self.dev_accuracy = MulticlassAccuracy(num_classes, average="micro", ignore_index=IGNORE_LABEL)
        # training.compile: a compiled view of the same module (same parameters). Kept out of the
        # module tree so that state dicts and checkpoints hold the plain model only.
        self.__dict__["compiled_model"] = torch.compile(self.model) if self.training_config.compile else None

    def on_train_batch_start(self, batch: DialogueBatch, batch_idx: int) -> None:
        # Each step's randomness (dropout) is a function of (seed, step, rank) alone, so a resumed
        # run continues exactly as an uninterrupted one would.
        seed_for_step(self.training_config.seed, self.global_step, self.global_rank)

    def forward(self, batch: DialogueBatch):
        model = self.compiled_model or self.model
        with torch.profiler.record_function("redifu.model"):
            return model(batch.features, batch.speakers, batch.mask)

    def _loss(self, batch: DialogueBatch):
        output = self(batch)
        with torch.profiler.record_function("redifu.loss"):
            loss, parts = redifu_loss(
                output, batch.labels, aux_weight=self.training_config.aux_loss_weight, class_weights=self.class_weights
            )
        return output, loss, parts

    def training_step(self, batch: DialogueBatch, batch_idx: int) -> torch.Tensor:
        _, loss, parts = self._loss(batch)
        size = batch.num_utterances
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=size, sync_dist=True)
        for name, value in parts.items():
            self.log(f"train/loss_{name}", value, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
        return loss

    def validation_step(self, batch: DialogueBatch, batch_idx: int) -> None:
        output, loss, _ = self._loss(batch)
        labels = batch.labels.flatten()
        predictions = output.logits.argmax(-1).flatten()
        self.dev_f1.update(predictions, labels)
        self.dev_accuracy.update(predictions, labels)
        self.log("dev/loss", loss, on_step=False, on_epoch=True, batch_size=batch.num_utterances, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        # Percent, like every reported figure; torchmetrics syncs across DDP processes.
        self.log(DEV_METRIC, 100.0 * self.dev_f1.compute(), prog_bar=True, sync_dist=False)
        self.log("dev/accuracy", 100.0 * self.dev_accuracy.compute(), sync_dist=False)
        self.dev_f1.reset()
        self.dev_accuracy.reset()

    def configure_optimizers(self):
        config = self.training_config
        optimizer = torch.optim.AdamW(parameter_groups(self.model, config.weight_decay), lr=config.lr)
        if config.scheduler == "none":
            return optimizer
        total = max(1, config.max_epochs * self.steps_per_epoch)
        warmup = int(round(config.warmup_epochs * self.steps_per_epoch))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
