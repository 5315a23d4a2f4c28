"""Experiment configuration: data, model and training sections, YAML files and ``key=value`` overrides.

The built-in defaults (no file at all) train a small ReDiFu on the IEMOCAP-shaped synthetic
preset. A YAML file overrides any subset of the defaults and dotted ``key=value`` pairs
override the file, e.g. ``training.lr=1e-4 model.denoiser=temporal data.path=/data/meld``.
Every key and value is checked; a mistake gives a one-line :class:`ConfigError` naming the key.

The package ships its configs (``redifu/configs/*.yaml``, the repository's ``configs/``);
wherever a config file is accepted, a shipped one can be named without ``.yaml``
(``meld-text``, ``authors-recipe-meld``), see :func:`shipped_configs`.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import yaml

from redifu.errors import ConfigError

# redifu.model (torch) is imported where the model options are checked, so that listing or
# reading configs (``redifu train --help``) stays fast.
if TYPE_CHECKING:
    from redifu.model import ReDiFuConfig


class _Loader(yaml.SafeLoader):
    """Safe YAML with YAML 1.2 booleans: only true/false are booleans, so ``denoiser: off``
    stays the string 'off'; and ``1e-4`` is a float."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


# Model options that come from the dataset's metadata, never from the user.
DATASET_DERIVED = ("modality_dims", "num_classes", "num_speakers")


@dataclass(frozen=True)
class DataConfig:
    """Where the dialogues come from.

    Args:
        path: A dataset location (a converted dataset directory or a feature file). ``None``
            uses the built-in synthetic generator.
        preset: Synthetic preset name (``iemocap`` or ``meld``), used when ``path`` is ``None``.
        seed: Seed of the synthetic generator (the data, not the model).
        modalities: Modalities to use (must include ``text``); ``None``: all the data has.
        synthetic: Overrides of the synthetic generator's spec fields.
        layout: Feature-pickle layout (``None``: detected); only for a pickle ``path``.
        text_feature: Which text features a pickle with several uses (``roberta1``..``4``, ``mean``).
        dev_fraction: Share of train dialogues held out as dev when a pickle has no dev list.
        dev_seed: Seed of that hold-out (recorded, so the split is reproducible).
    """

    path: str | None = None
    preset: str = "iemocap"
    seed: int = 0
    modalities: tuple[str, ...] | None = None
    synthetic: Mapping[str, Any] = field(default_factory=dict)
    layout: str | None = None
    text_feature: str = "roberta1"
    dev_fraction: float = 0.1
    dev_seed: int = 0

    def __post_init__(self) -> None:
        if self.modalities is not None:
            from redifu.errors import MODALITIES

            unknown = [m for m in self.modalities if m not in MODALITIES]
            if unknown:
                raise ConfigError(f"data.modalities: unknown modality {unknown[0]!r}; known: {list(MODALITIES)}")
            if "text" not in self.modalities:
                raise ConfigError(f"data.modalities: must include 'text', got {list(self.modalities)}")


@dataclass(frozen=True)
class TrainingConfig:
    """How the model is trained and selected.

    Args:
        seed: Seed for initialisation, shuffling and dropout.
        max_epochs: Upper bound on epochs.
        patience: Early stopping after this many epochs without a better dev weighted F1
            (0 disables early stopping).
        batch_size: Dialogues per training batch (per device).
        eval_batch_size: Dialogues per evaluation batch.
        lr: Peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        scheduler: ``cosine`` (per-step cosine decay after linear warm-up) or ``none``.
        warmup_epochs: Linear warm-up length in epochs (may be fractional).
        aux_loss_weight: Weight of the mean per-modality auxiliary cross-entropy.
        class_weights: Weight the cross-entropy by inverse training-class frequency.
        grad_clip: Gradient-norm clipping (0 disables).
        accelerator: ``auto`` (CUDA when present, else CPU), ``cpu``, ``gpu``.
        devices: Devices (processes) to train on; more than one uses DDP.
        strategy: Lightning strategy (``auto``, ``ddp``, ...).
        precision: Lightning precision (``32-true``, ``bf16-mixed``, ...); ``bf16`` is short for
            ``bf16-mixed`` (bfloat16 autocast, on the CPU and on CUDA).
        compile: Train through ``torch.compile`` of the model (same parameters and results
            within float tolerance; the first steps pay the compilation).
        activation_checkpointing: Recompute the denoiser, graph and fusion layers' activations
            in backward instead of keeping them: less memory, about one more forward pass per
            step, same results (dropout masks included).
        fast_dropout: On the CPU, draw attention-dropout masks four to a random word (same
            distribution, about 8 times faster to draw; other draws than PyTorch's dropout, so a
            seed gives other results than without it).
        num_workers: DataLoader worker processes.
        threads: torch intra-op threads on the CPU (``None``: torch's default).
        logger: ``csv``, ``tensorboard`` or ``none``.
        progress_bar: Show Lightning's progress bar.
        deterministic: Use deterministic algorithms (bit-identical reruns on the CPU).
    """

    seed: int = 0
    max_epochs: int = 30
    patience: int = 8
    batch_size: int = 8
    eval_batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 1e-4
    scheduler: str = "cosine"
    warmup_epochs: float = 1.0
    aux_loss_weight: float = 0.3
    class_weights: bool = False
    grad_clip: float = 1.0
    accelerator: str = "auto"
    devices: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    compile: bool = False
    activation_checkpointing: bool = False
    fast_dropout: bool = False
    num_workers: int = 0
    threads: int | None = None
    logger: str = "csv"
    progress_bar: bool = True
    deterministic: bool = True

    def __post_init__(self) -> None:
        checks = [
            ("max_epochs", self.max_epochs >= 1, "must be >= 1"),
            ("patience", self.patience >= 0, "must be >= 0"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("eval_batch_size", self.eval_batch_size >= 1, "must be >= 1"),
            ("lr", self.lr > 0, "must be > 0"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("scheduler", self.scheduler in ("cosine", "none"), "must be 'cosine' or 'none'"),
            ("warmup_epochs", self.warmup_epochs >= 0, "must be >= 0"),
            ("aux_loss_weight", self.aux_loss_weight >= 0, "must be >= 0"),
            ("grad_clip", self.grad_clip >= 0, "must be >= 0"),
            ("accelerator", self.accelerator in ("auto", "cpu", "gpu", "cuda", "mps"), "must be auto, cpu, gpu, cuda or mps"),
            ("devices", self.devices >= 1, "must be >= 1"),
            ("num_workers", self.num_workers >= 0, "must be >= 0"),
            ("threads", self.threads is None or self.threads >= 1, "must be >= 1"),
            ("logger", self.logger in ("csv", "tensorboard", "none"), "must be csv, tensorboard or none"),
        ]
        for key, ok, message in checks:
            if not ok:
                raise ConfigError(f"training.{key}: {message}, got {getattr(self, key)!r}")


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment: data, model options (minus what the data decides) and training."""

    data: DataConfig = field(default_factory=DataConfig)
    model: Mapping[str, Any] = field(default_factory=dict)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self.data)
        if data["modalities"] is not None:
            data["modalities"] = list(data["modalities"])
        data["synthetic"] = dict(self.data.synthetic)
        return {"data": data, "model": dict(self.model), "training": dataclasses.asdict(self.training)}

    def model_config(self, *, modality_dims: Mapping[str, int], num_classes: int, num_speakers: int) -> ReDiFuConfig:
        """The frozen model config: these options plus what the dataset's metadata says."""
        from redifu.model import ReDiFuConfig

        return ReDiFuConfig(
            modality_dims=modality_dims, num_classes=num_classes, num_speakers=num_speakers, **self.model
        )


_SECTIONS = {"data": DataConfig, "training": TrainingConfig}


def _model_fields() -> dict[str, Any]:
    from redifu.model import ReDiFuConfig

    hints = typing.get_type_hints(ReDiFuConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(ReDiFuConfig) if f.name not in DATASET_DERIVED}


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field's type annotation; convert where lossless (int -> float)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, value, option)
            except ConfigError as error:
                errors.append(error)
        raise errors[0]
    if annotation is Any:
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(key, v, args[0]) for v in value)
    if origin in (Mapping, dict, typing.Mapping) or annotation in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        value_type = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(f"{key}.{k}", v, value_type) for k, v in value.items()}
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _merge(base: dict[str, Any], updates: Mapping[str, Any]) -> None:
    for key, value in updates.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict) and key != "synthetic":
            _merge(base[key], value)
        else:
            base[key] = value


def build_section(name: str, cls: type, values: Any) -> Any:
    """The dataclass ``cls`` built from a mapping of its options, each checked against its type
    (one-line :class:`ConfigError` naming ``name.key`` otherwise)."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{name}: expected a mapping of options")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{name}.{key}: unknown option")
        kwargs[key] = _coerce(f"{name}.{key}", value, hints[key])
    return cls(**kwargs)


def build_config(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Validate a nested mapping (e.g. parsed YAML) into an :class:`ExperimentConfig`."""
    unknown = sorted(set(raw) - {"data", "model", "training"})
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section; expected data, model or training")
    sections = {name: build_section(name, cls, raw.get(name) or {}) for name, cls in _SECTIONS.items()}
    model_values = raw.get("model") or {}
    if not isinstance(model_values, Mapping):
        raise ConfigError("model: expected a mapping of options")
    fields = _model_fields()
    model: dict[str, Any] = {}
    for key, value in model_values.items():
        if key in DATASET_DERIVED:
            raise ConfigError(f"model.{key}: set by the dataset's metadata, not by the config")
        if key not in fields:
            raise ConfigError(f"model.{key}: unknown option")
        model[key] = _coerce(f"model.{key}", value, fields[key])
    # Check the model options now, with placeholder metadata, so mistakes surface before any work.
    from redifu.model import ReDiFuConfig

    ReDiFuConfig(modality_dims={"text": 1, "audio": 1, "visual": 1}, num_classes=2, num_speakers=1, **model)
    return ExperimentConfig(data=sections["data"], model=model, training=sections["training"])


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (['a', 'b'], parsed value); values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"{text}: overrides look like key=value (e.g. training.lr=1e-4)")
    key, raw_value = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"{key}: override keys are dotted, like training.lr or model.window")
    try:
        value = _yaml_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"{key}: cannot parse value {raw_value!r}") from None
    return parts, value


def shipped_configs() -> dict[str, Any]:
    """The configs shipped inside the package, by name (file name without ``.yaml``), sorted.

    Values are :mod:`importlib.resources` traversables (files in an installed wheel, in the
    source tree for an editable install).
    """
    root = importlib.resources.files("redifu") / "configs"
    if not root.is_dir():
        return {}
    entries = {entry.name[: -len(".yaml")]: entry for entry in root.iterdir()
               if entry.name.endswith(".yaml") and entry.is_file()}
    return dict(sorted(entries.items()))


def _read_config_text(config: str | Path) -> tuple[str, str]:
    """(where, YAML text) of a config file path or a shipped config's name."""
    path = Path(config)
    if path.is_file():
        return str(path), path.read_text(encoding="utf-8")
    shipped = shipped_configs()
    if str(config) in shipped:
        return f"{config} (shipped config)", shipped[str(config)].read_text(encoding="utf-8")
    names = ", ".join(shipped) or "none"
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        raise ConfigError(f"{path}: config file not found (or name a shipped config: {names})")
    raise ConfigError(f"{config}: no such config file or shipped config; shipped configs: {names}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a YAML config file or a shipped config's name (not yet validated)."""
    where, text = _read_config_text(path)
    try:
        loaded = _yaml_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{where}: invalid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"{where}: expected a mapping with data/model/training sections")
    return dict(loaded)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Defaults, then the YAML config (if any), then ``key=value`` overrides.

    Args:
        path: A YAML file, or the name of a shipped config (``meld-text``; see
            :func:`shipped_configs`). A file of that name in the working directory wins.
        overrides: Dotted ``key=value`` strings (``training.lr=1e-4``).
    """
    raw: dict[str, Any] = {"data": {}, "model": {}, "training": {}}
    if path is not None:
        _merge(raw, read_config_file(path))
    return build_config(apply_overrides(raw, overrides))


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set each dotted ``key=value`` of ``overrides`` in the nested mapping ``raw`` (in place)."""
    for text in overrides:
        parts, value = parse_override(text)
        set_dotted(raw, parts, value)
    return raw


def set_dotted(raw: dict[str, Any], parts: Sequence[str], value: Any) -> dict[str, Any]:
    """Set the dotted key ``parts`` (``['training', 'lr']``) to ``value`` in ``raw`` (in place)."""
    target = raw
    for part in parts[:-1]:
        node = target.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(parts)}: {part} is not a section")
        target = node
    target[parts[-1]] = value
    return raw


def dump_config(config: ExperimentConfig) -> str:
    """The resolved config as YAML (what a run directory records)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
