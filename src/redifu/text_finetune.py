"""``redifu text finetune``: fine-tune a text encoder on a prepared dataset's training split, each
utterance read with its dialogue context (:mod:`redifu.features.context`), and write an encoder
directory (:mod:`redifu.features.finetuned_text`) that ``redifu data prepare --text-encoder``
and ``redifu predict`` use.

The model is the transformer, the mean of the target utterance's token states and a linear
emotion classifier, trained with cross-entropy (AdamW, linear warm-up then linear decay, the
recipe of EmoBERTa and CoMPM). After every epoch the dev split is encoded and scored; the epoch
with the best dev weighted F1 is the one written. The test split is never read.

Resumable: the state (weights, optimiser, schedule, random state, position in the epoch) is
written atomically to ``.<ENCODER_DIR>.finetune/`` every ``checkpoint_steps`` steps and at every
epoch end; rerunning the same command continues from it (different settings or data are
refused, ``restart=True`` starts over). The encoder directory appears only when training ends.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from redifu.errors import IGNORE_LABEL, ConfigError, DataError
from redifu.features.context import ContextInput, ContextSpec, build_dialogue_inputs
from redifu.features.finetuned_text import (ADAPTER_FILE, ENCODER_FILE, FORMAT, POOLING, encode_inputs, lora_factors,
                                            pad_inputs, pool_target, uses_segment_ids)
from redifu.features.text import DEFAULT_TEXT_ENCODER, TextEncoder
from redifu.files import atomic_directory, atomic_file, write_json_atomic

log = logging.getLogger(__name__)

__all__ = ["FinetuneSettings", "finetune_text_encoder", "parse_settings"]

STATE_FILE = "state.pt"
BEST_FILE = "best.safetensors"


@dataclass(frozen=True)
class FinetuneSettings:
    """What ``redifu text finetune`` trains with (``key=value`` on the command line).

    Args:
        past: Preceding utterances in each input (context construction, see
            :class:`~redifu.features.context.ContextSpec`). The default ``0`` was chosen on MELD
            dev against 4 and 8 (docs/real-text/CONTEXT.md).
        future: Following utterances in each input (``0``: causal, usable live).
        max_length: Token budget of each input.
        speakers: Prefix every utterance with its speaker's name.
        epochs: Training epochs; the one with the best dev weighted F1 is kept. The default ``3``
            was chosen on MELD dev over 2 (docs/real-text/CONTEXT.md).
        lr: Peak learning rate (AdamW).
        batch_size: Utterances per step.
        eval_batch_size: Utterances per forward pass when scoring dev.
        warmup: Share of the steps with a linearly rising learning rate.
        weight_decay: AdamW weight decay (not on biases and norms).
        dropout: Dropout before the classifier.
        grad_clip: Gradient-norm clipping (``0``: none).
        class_weights: Weight the cross-entropy by inverse training-class frequency.
        lora_rank: ``0``: fine-tune every weight; ``r > 0``: train rank-``r`` LoRA adapters
            (``peft``) on the attention and feed-forward projections; the encoder directory then
            holds only their factors (``adapter.safetensors``, about 1/30 of the base's size),
            merged into the base model when it is loaded.
        lora_alpha: LoRA scale numerator (``None``: ``2 * lora_rank``).
        seed: Seed of initialisation, batch order and dropout.
        checkpoint_steps: Steps between resume states (and at every epoch end).
        max_train_dialogues: Train on the first ``N`` training dialogues of a seeded shuffle
            (for quick studies of the settings; ``None``: all).
        threads: torch intra-op threads on the CPU (``None``: torch's default).
        device: Torch device (``None``: CUDA when present, else the CPU).
    """

    past: int = 0
    future: int = 0
    max_length: int = 128
    speakers: bool = True
    epochs: int = 3
    lr: float = 5e-5
    batch_size: int = 32
    eval_batch_size: int = 64
    warmup: float = 0.1
    weight_decay: float = 0.01
    dropout: float = 0.1
    grad_clip: float = 1.0
    class_weights: bool = False
    lora_rank: int = 0
    lora_alpha: float | None = None
    seed: int = 0
    checkpoint_steps: int = 200
    max_train_dialogues: int | None = None
    threads: int | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        checks = [
            ("epochs", self.epochs >= 1, "must be >= 1"), ("lr", self.lr > 0, "must be > 0"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("eval_batch_size", self.eval_batch_size >= 1, "must be >= 1"),
            ("warmup", 0 <= self.warmup < 1, "must be in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("dropout", 0 <= self.dropout < 1, "must be in [0, 1)"),
            ("grad_clip", self.grad_clip >= 0, "must be >= 0"),
            ("lora_rank", self.lora_rank >= 0, "must be >= 0"),
            ("checkpoint_steps", self.checkpoint_steps >= 1, "must be >= 1"),
            ("max_train_dialogues", self.max_train_dialogues is None or self.max_train_dialogues >= 1, "must be >= 1"),
            ("threads", self.threads is None or self.threads >= 1, "must be >= 1"),
        ]
        for key, ok, message in checks:
            if not ok:
                raise ConfigError(f"{key}: {message}, got {getattr(self, key)!r}")
        try:
            self.context
        except ValueError as error:
            raise ConfigError(f"past/future/max_length: {error}") from None

    @property
    def context(self) -> ContextSpec:
        return ContextSpec(past=self.past, future=self.future, max_length=self.max_length, speakers=self.speakers)

    def training_identity(self) -> dict[str, Any]:
        """The settings a resumed run must share (all but the device, threads and cadence)."""
        values = asdict(self)
        for key in ("device", "threads", "checkpoint_steps", "eval_batch_size"):
            values.pop(key)
        return values


def parse_settings(overrides: Sequence[str]) -> FinetuneSettings:
    """``key=value`` strings (YAML values, e.g. ``past=4 lr=3e-5``) to :class:`FinetuneSettings`."""
    from redifu.config import apply_overrides, build_section

    for text in overrides:
        if "=" not in text or "." in text.split("=", 1)[0]:
            raise ConfigError(f"{text}: fine-tuning options look like key=value (e.g. past=4 lr=3e-5)")
    raw = apply_overrides({}, [f"finetune.{text}" for text in overrides]).get("finetune", {})
    settings = build_section("finetune", FinetuneSettings, raw)
    return settings


# ---------------------------------------------------------------------------------------------


@dataclass
class _Split:
    inputs: list[ContextInput]
    labels: np.ndarray  # (T,)


def _transcript_splits(corpus: Any, data: Path, tokenizer: Any, spec: ContextSpec, *, segments: bool,
                       max_dialogues: int | None, seed: int) -> dict[str, _Split]:
    splits: dict[str, _Split] = {}
    for split in ("train", "dev"):
        dialogues = corpus.splits.get(split)
        if not dialogues:
            raise DataError(f"{data}: split {split!r}: missing or empty (fine-tuning trains on train, selects on dev)")
        if split == "train" and max_dialogues is not None and max_dialogues < len(dialogues):
            order = np.random.default_rng(seed).permutation(len(dialogues))[:max_dialogues]
            dialogues = [dialogues[i] for i in sorted(order)]
        inputs: list[ContextInput] = []
        labels: list[int] = []
        for dialogue in dialogues:
            transcript = dialogue.transcript
            if transcript is None:
                raise DataError(f"{data}: split {split!r}: dialogue {dialogue.dialogue_id}: field 'texts': missing; "
                                "fine-tuning needs a dataset prepared from transcripts by this redifu version "
                                "(redifu data prepare NAME --output DIR)")
            for item, label in zip(build_dialogue_inputs(tokenizer, transcript, spec, segment_ids=segments),
                                   dialogue.labels.tolist()):
                if label != IGNORE_LABEL:
                    inputs.append(item)
                    labels.append(int(label))
        splits[split] = _Split(inputs, np.asarray(labels, dtype=np.int64))
    return splits


def _data_fingerprint(corpus: Any) -> str:
    """SHA-256 of what fine-tuning reads: the train and dev transcripts and labels."""
    digest = hashlib.sha256(json.dumps(list(corpus.metadata.classes)).encode())
    for split in ("train", "dev"):
        for dialogue in corpus.splits.get(split, []):
            digest.update(json.dumps([split, dialogue.dialogue_id, list(dialogue.speaker_names or ()),
                                      list(dialogue.texts or ()), dialogue.labels.tolist()]).encode())
    return "sha256:" + digest.hexdigest()


def _base_path(base: str) -> tuple[str, str]:
    """(what to load, its version) for a base model name (the packaged MiniLM, a path, a hub id)."""
    encoder = TextEncoder(base)
    local = encoder._local_path()
    return (str(local) if local is not None else base), encoder.version


def _batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar lengths (little padding): a seeded shuffle, sorted by length in
    pools of 50 batches, the batches shuffled again."""
    order = rng.permutation(len(lengths))
    pool = batch_size * 50
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def _scores(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    classes = list(range(num_classes))
    return {"weighted_f1": 100 * float(f1_score(labels, predicted, labels=classes, average="weighted", zero_division=0)),
            "accuracy": 100 * float(accuracy_score(labels, predicted)),
            "macro_f1": 100 * float(f1_score(labels, predicted, labels=classes, average="macro", zero_division=0))}


class _Classifier:
    """The transformer, target pooling and a linear head; built on the torch modules directly."""

    def __init__(self, backbone: Any, num_classes: int, dropout: float) -> None:
        import torch

        self.backbone = backbone
        self.head = torch.nn.Linear(backbone.config.hidden_size, num_classes)
        self.dropout = torch.nn.Dropout(dropout)

    def modules(self) -> Any:
        import torch

        return torch.nn.ModuleDict({"backbone": self.backbone, "head": self.head})

    def logits(self, batch: dict[str, Any]) -> Any:
        hidden = self.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               token_type_ids=batch["token_type_ids"]).last_hidden_state  # (B, L, H)
        return self.head(self.dropout(pool_target(hidden, batch["target_mask"])))  # (B, C)


def finetune_text_encoder(
    data: str | Path,
    output: str | Path,
    *,
    base: str = DEFAULT_TEXT_ENCODER,
    settings: FinetuneSettings | None = None,
    progress: bool = True,
    restart: bool = False,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Fine-tune ``base`` on the prepared dataset ``data`` and write the encoder directory ``output``.

    Args:
        data: A dataset directory from ``redifu data prepare`` (with its transcripts).
        output: The encoder directory to write.
        base: Packaged all-MiniLM-L6-v2 (default), a local model directory or a Hugging Face id.
        settings: :class:`FinetuneSettings`.
        restart: Discard a resume state left by an interrupted run instead of continuing it.
        stop_after_steps: Stop (leaving the resume state) after this many steps of this call
            (tests of resumption).

    Returns:
        The encoder manifest (selected epoch, dev scores, history, cost), or ``{"stopped": step}``.
    """
    import torch
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm
    from transformers import AutoModel, AutoTokenizer

    from redifu.data.store import load_stored_corpus

    settings = settings or FinetuneSettings()
    data, output = Path(data), Path(output)
    if output.exists() and not (output / ENCODER_FILE).is_file() and (not output.is_dir() or any(output.iterdir())):
        raise DataError(f"{output}: exists and is not a fine-tuned text encoder; refusing to overwrite")
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    corpus = load_stored_corpus(data)
    classes = tuple(corpus.metadata.classes)
    fingerprint = _data_fingerprint(corpus)
    base_path, base_version = _base_path(base)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    torch.manual_seed(settings.seed)
    backbone = AutoModel.from_pretrained(base_path)
    segments = uses_segment_ids(backbone.config)
    spec = settings.context
    splits = _transcript_splits(corpus, data, tokenizer, spec, segments=segments,
                                max_dialogues=settings.max_train_dialogues, seed=settings.seed)
    train_split, dev_split = splits["train"], splits["dev"]
    if settings.lora_rank:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise ConfigError("lora_rank: LoRA needs peft: pip install 'redifu[finetune]'") from None
        backbone = get_peft_model(backbone, LoraConfig(
            r=settings.lora_rank, lora_alpha=settings.lora_alpha or 2 * settings.lora_rank, lora_dropout=0.1,
            target_modules=["query", "key", "value", "dense"]))
    model = _Classifier(backbone, len(classes), settings.dropout)
    modules = model.modules()
    device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    modules.to(device)

    decay, no_decay = [], []
    for name, parameter in modules.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 else decay).append(parameter)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr)
    lengths = np.array([len(i.input_ids) for i in train_split.inputs])
    steps_per_epoch = math.ceil(len(lengths) / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    warmup_steps = int(settings.warmup * total_steps)

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    weights = None
    if settings.class_weights:
        counts = np.bincount(train_split.labels, minlength=len(classes)).astype(np.float64)
        weights = torch.tensor(counts.sum() / np.maximum(counts, 1) / len(classes), dtype=torch.float32, device=device)
    loss_function = torch.nn.CrossEntropyLoss(weight=weights)

    work = output.parent / f".{output.name}.finetune"
    identity = {"base": base, "base_version": base_version, "data": fingerprint,
                "settings": settings.training_identity()}
    state: dict[str, Any] = {"epoch": 0, "step_in_epoch": 0, "best": None, "history": [], "seconds": 0.0,
                             "trained_utterances": 0}
    if restart:
        shutil.rmtree(work, ignore_errors=True)
    if (work / STATE_FILE).is_file():
        saved_identity = json.loads((work / "identity.json").read_text())
        if saved_identity != identity:
            changed = sorted(k for k in identity if identity[k] != saved_identity.get(k))
            raise ConfigError(f"{work}: an interrupted fine-tuning with other {', '.join(changed)} is there; "
                              "rerun with its settings to continue it, or pass --restart")
        saved = torch.load(work / STATE_FILE, map_location=device, weights_only=True)
        modules.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"].cpu())
        state = json.loads(saved["progress"])
        log.info("resuming fine-tuning at epoch %d, step %d", state["epoch"] + 1, state["step_in_epoch"])
    else:
        work.mkdir(parents=True, exist_ok=True)
        write_json_atomic(work / "identity.json", identity)

    def save_state() -> None:
        with atomic_file(work / STATE_FILE, "wb") as stream:
            torch.save({"model": modules.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
                        "progress": json.dumps(state)}, stream)

    steps_this_call = 0
    pad_id = tokenizer.pad_token_id or 0
    while state["epoch"] < settings.epochs:
        epoch = state["epoch"]
        batches = _batches(lengths, settings.batch_size, np.random.default_rng([settings.seed, epoch]))
        modules.train()
        started = time.perf_counter()
        done_before = state["step_in_epoch"]
        with tqdm(total=len(lengths), initial=int(sum(len(b) for b in batches[:done_before])), disable=not progress,
                  desc=f"fine-tune epoch {epoch + 1}/{settings.epochs}", unit="utt") as bar:
            for index in range(done_before, len(batches)):
                rows = batches[index]
                batch = {k: v.to(device) for k, v in pad_inputs([train_split.inputs[i] for i in rows], pad_id).items()}
                target = torch.from_numpy(train_split.labels[rows]).to(device)
                loss = loss_function(model.logits(batch), target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if settings.grad_clip:
                    torch.nn.utils.clip_grad_norm_(modules.parameters(), settings.grad_clip)
                optimizer.step()
                scheduler.step()
                state["step_in_epoch"] = index + 1
                state["trained_utterances"] += len(rows)
                bar.update(len(rows))
                bar.set_postfix(loss=f"{loss.item():.3f}")
                steps_this_call += 1
                if state["step_in_epoch"] % settings.checkpoint_steps == 0 or (
                        stop_after_steps is not None and steps_this_call >= stop_after_steps):
                    state["seconds"] += time.perf_counter() - started
                    started = time.perf_counter()
                    save_state()
                    if stop_after_steps is not None and steps_this_call >= stop_after_steps:
                        return {"stopped": steps_this_call}
        state["seconds"] += time.perf_counter() - started
        dev_started = time.perf_counter()
        features = encode_inputs(backbone, dev_split.inputs, pad_id=pad_id, batch_size=settings.eval_batch_size,
                                 progress=progress, desc="dev")
        with torch.inference_mode():
            modules.eval()
            logits = model.head(torch.from_numpy(features).to(device))  # (T_dev, C)
        scores = _scores(dev_split.labels, logits.argmax(-1).cpu().numpy(), len(classes))
        dev_seconds = time.perf_counter() - dev_started
        record = {"epoch": epoch + 1, "dev": scores, "dev_seconds": round(dev_seconds, 1)}
        state["history"].append(record)
        log.info("fine-tune epoch %d: dev weighted F1 %.2f, accuracy %.2f", epoch + 1, scores["weighted_f1"],
                 scores["accuracy"])
        if state["best"] is None or scores["weighted_f1"] > state["best"]["dev"]["weighted_f1"]:
            state["best"] = record
            save_file({k: v.detach().cpu().contiguous() for k, v in modules.state_dict().items()},
                      str(work / BEST_FILE))  # written before the state that names it
        state["epoch"] = epoch + 1
        state["step_in_epoch"] = 0
        save_state()

    # the selected epoch: written whole, or (LoRA) as its low-rank factors over the base
    modules.load_state_dict(load_file(str(work / BEST_FILE), device=str(device)))
    adapter = lora_factors(backbone) if settings.lora_rank else None
    epoch_seconds = state["seconds"] / settings.epochs
    hidden_size = (backbone.get_base_model() if adapter else backbone).config.hidden_size
    manifest = {
        "format": FORMAT,
        "version": 1,
        "base": base,
        "base_version": base_version,
        "context": spec.to_dict(),
        "pooling": POOLING,
        "dimension": int(hidden_size),
        "classes": list(classes),
        "data": {"path": str(data.resolve()), "fingerprint": fingerprint, "dataset": corpus.metadata.name,
                 "train_utterances": len(train_split.labels), "dev_utterances": len(dev_split.labels)},
        "settings": asdict(settings),
        "selected_epoch": state["best"]["epoch"],
        "dev": state["best"]["dev"],
        "history": state["history"],
        "cost": {"seconds_per_epoch": round(epoch_seconds, 1),
                 "train_utterances_per_second": round(state["trained_utterances"] / max(state["seconds"], 1e-9), 1),
                 "device": str(device), "threads": torch.get_num_threads()},
        "selection": "epoch with the best dev weighted F1; the test split is never read",
    }
    from redifu import __version__

    manifest["redifu_version"] = __version__
    if adapter is not None:
        manifest["adapter"] = {"file": ADAPTER_FILE, "rank": settings.lora_rank, "base_version": base_version,
                               "factors": len(adapter) // 2}
    with atomic_directory(output) as staging:
        if adapter is not None:  # the base's config and the factors; the base itself stays where it is
            backbone.get_base_model().config.save_pretrained(str(staging))
            save_file(adapter, str(staging / ADAPTER_FILE))
        else:
            backbone.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()},
                  str(staging / "head.safetensors"))
        (staging / ENCODER_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return manifest
