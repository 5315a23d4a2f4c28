"""The ReDiFu model: a plain ``nn.Module``, built from one frozen :class:`ReDiFuConfig`.

Pipeline (Liu et al., "Relational graph-driven differential denoising and diffusion attention
fusion for multimodal conversation emotion recognition", Neurocomputing 2026):

1. per-modality input standardisation and projection, speaker embedding, position encoding
   (optionally a bidirectional GRU over the utterances: the recurrent baseline, ``recurrent``);
2. differential-Transformer denoising of audio and visual (:mod:`redifu.nn.differential_attention`);
3. relation-aware speaker graph inside and across modalities (:mod:`redifu.nn.relation_graph`);
4. text-guided cross-modal diffusion fusion (:mod:`redifu.nn.fusion`);
5. a classifier on the fused stream and auxiliary classifiers on each modality's stream.

Every difference between datasets (feature sizes, classes, speakers) comes from the config;
the model never branches on a dataset's name. Losses live in :mod:`redifu.training`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from redifu.errors import MODALITIES, ConfigError
from redifu.nn.attention import causal_attention_mask
from redifu.nn.differential_attention import DifferentialDenoiser
from redifu.nn.fusion import FUSIONS, build_fusion
from redifu.nn.positional import SinusoidalPositionalEncoding
from redifu.nn.recurrent import DialogueGRU
from redifu.nn.relation_graph import GraphAttention, RelationGraph

DENOISERS = ("off", "dual", "temporal")
GRAPHS = ("off", "modality", "modality+cross")
POSITION_ENCODINGS = ("none", "sinusoidal", "rotary")
RECURRENTS = ("none", "bigru")


@dataclass(frozen=True)
class ReDiFuConfig:
    """Everything needed to build a :class:`ReDiFu` model. Frozen: never mutated once built.

    Args:
        modality_dims: Input feature size per modality; must contain ``text``.
        num_classes: Number of emotion classes.
        num_speakers: Number of speaker slots.
        hidden_size: Model size ``D`` shared by every stage.
        num_heads: Attention heads in the fusion stage (and default for the others).
        dropout: Dropout everywhere.
        position_encoding: ``none``, ``sinusoidal`` (added to inputs) or ``rotary`` (inside
            every self-attention).
        speaker_embedding: Add a learned speaker embedding to every modality's input.
        recurrent: ``none`` or ``bigru``: each modality's input stream then passes through a
            bidirectional GRU over the dialogue (:class:`~redifu.nn.recurrent.DialogueGRU`, no
            residual), before the denoiser; with the other stages off, the DialogueRNN-family
            baseline.
        denoiser: ``off``, ``dual`` (Ye et al. differential attention) or ``temporal`` (the
            authors' previous-utterance variant).
        denoiser_layers: Depth of the denoiser stack.
        denoiser_heads: Differential heads (``None``: ``num_heads``); ``hidden_size`` must be
            divisible by twice this number for ``dual``.
        denoise_modalities: Which modalities are denoised (text optional).
        graph: ``off``, ``modality`` (speaker subgraph inside each modality) or
            ``modality+cross`` (plus edges between modalities).
        graph_layers: Relational graph attention layers.
        graph_heads: Graph attention heads (``None``: ``num_heads``).
        graph_modalities: Modalities that take part in the graph (``None``: all).
        window: Utterances at most this far apart are connected inside a modality.
        cross_window: Utterances at most this far apart are connected across modalities.
        speaker_aware: Type edges by same/other speaker (``False``: speaker-blind edges).
        fusion: ``concat``, ``symmetric`` or ``text_guided``.
        fusion_layers: Depth of the fusion stack.
        cross_rotary: Rotary positions in the cross-modal attention of the fusion, so that a
            text query can locate its own utterance among the audio/visual keys. ``None`` (the
            default): on, unless ``position_encoding`` is ``none`` (then no stage sees positions).
        fusion_aligned: In text-guided fusion, add each utterance's own audio/visual vector to
            what the cross-attention brings before the gate.
        ffn_mult: Feed-forward hidden size as a multiple of ``hidden_size``.
        logit_weights: If set, the prediction is the weighted sum of the per-modality logits
            with these fixed weights (the authors' recipe) instead of the fused classifier, and
            neither the fused classifier nor the fusion's fused projection is built.
        causal: No utterance sees a later one anywhere (live conversations,
            :meth:`redifu.predict.Predictor.session`): causal masks in every self- and
            cross-attention of the denoiser and the fusion, graph edges from the past and self
            only (no ``*_future`` relations); ``recurrent=bigru`` is refused.
        attention_window: With ``causal``, every attention sees at most this many earlier
            utterances (``None``: the whole past). Bounds a live session's memory and work per
            utterance; ``None`` keeps every earlier utterance's keys and values.
    """

    modality_dims: Mapping[str, int]
    num_classes: int
    num_speakers: int
    hidden_size: int = 128
    num_heads: int = 4
    dropout: float = 0.3
    position_encoding: str = "sinusoidal"
    speaker_embedding: bool = True
    recurrent: str = "none"
    denoiser: str = "dual"
    denoiser_layers: int = 1
    denoiser_heads: int | None = None
    denoise_modalities: tuple[str, ...] = ("audio", "visual")
    graph: str = "modality+cross"
    graph_layers: int = 2
    graph_heads: int | None = None
    graph_modalities: tuple[str, ...] | None = None
    window: int = 10
    cross_window: int = 0
    speaker_aware: bool = True
    fusion: str = "text_guided"
    fusion_layers: int = 2
    cross_rotary: bool | None = None
    fusion_aligned: bool = True
    ffn_mult: float = 2.0
    logit_weights: Mapping[str, float] | None = None
    causal: bool = False
    attention_window: int | None = None

    def __post_init__(self) -> None:
        dims = dict(self.modality_dims)
        unknown = [m for m in dims if m not in MODALITIES]
        if unknown:
            raise ConfigError(f"model.modality_dims: unknown modality {unknown[0]!r}; known: {MODALITIES}")
        if "text" not in dims:
            raise ConfigError("model.modality_dims: 'text' is required (text is the main stream)")
        if any(int(d) < 1 for d in dims.values()):
            raise ConfigError(f"model.modality_dims: feature sizes must be >= 1, got {dims}")
        object.__setattr__(self, "modality_dims", {m: int(dims[m]) for m in MODALITIES if m in dims})
        object.__setattr__(self, "denoise_modalities", tuple(self.denoise_modalities))
        if self.graph_modalities is not None:
            object.__setattr__(self, "graph_modalities", tuple(self.graph_modalities))
        if self.logit_weights is not None:
            object.__setattr__(self, "logit_weights", {k: float(v) for k, v in self.logit_weights.items()})
        if self.cross_rotary is True and self.position_encoding == "none":
            raise ConfigError("model.cross_rotary: position_encoding 'none' turns positions off everywhere; "
                              "cross_rotary=true contradicts it, got True")
        if self.cross_rotary is None:
            object.__setattr__(self, "cross_rotary", self.position_encoding != "none")
        self._validate()

    def _validate(self) -> None:
        def need(condition: bool, key: str, message: str) -> None:
            if not condition:
                raise ConfigError(f"model.{key}: {message}, got {getattr(self, key)!r}")

        need(self.num_classes >= 2, "num_classes", "must be >= 2")
        need(self.num_speakers >= 1, "num_speakers", "must be >= 1")
        need(self.hidden_size >= 2 and self.hidden_size % 2 == 0, "hidden_size", "must be a positive even number")
        need(self.num_heads >= 1 and self.hidden_size % self.num_heads == 0, "num_heads", "must divide hidden_size")
        need(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        need(self.position_encoding in POSITION_ENCODINGS, "position_encoding", f"must be one of {POSITION_ENCODINGS}")
        need(self.recurrent in RECURRENTS, "recurrent", "must be 'none' or 'bigru'")
        need(not (self.causal and self.recurrent == "bigru"), "recurrent",
             "a bidirectional GRU reads later utterances; causal=true needs recurrent 'none'")
        need(self.attention_window is None or self.attention_window >= 0, "attention_window", "must be >= 0")
        need(self.attention_window is None or self.causal, "attention_window",
             "limits how far back a causal model attends; set causal=true with it")
        need(self.denoiser in DENOISERS, "denoiser", f"must be one of {DENOISERS}")
        need(self.denoiser_layers >= 1, "denoiser_layers", "must be >= 1")
        need(self.denoiser_heads is None or self.denoiser_heads >= 1, "denoiser_heads", "must be >= 1")
        heads = self.denoiser_heads or self.num_heads
        if self.denoiser == "dual":
            need(self.hidden_size % (2 * heads) == 0, "denoiser_heads",
                 f"2 x heads must divide hidden_size ({self.hidden_size}) for the dual denoiser")
        else:
            need(self.hidden_size % heads == 0, "denoiser_heads", "must divide hidden_size")
        if self.denoiser != "off" and self.position_encoding == "rotary":
            head_dim = self.hidden_size // heads // (2 if self.denoiser == "dual" else 1)
            need(head_dim % 2 == 0, "denoiser_heads",
                 f"rotary positions need an even denoiser head size (hidden_size / heads"
                 f"{' / 2' if self.denoiser == 'dual' else ''} = {head_dim})")
        if self.position_encoding == "rotary" or self.cross_rotary:
            need((self.hidden_size // self.num_heads) % 2 == 0, "num_heads", "rotary needs an even head size")
        need(all(m in MODALITIES for m in self.denoise_modalities), "denoise_modalities",
             f"must name modalities from {MODALITIES}")
        need(self.graph in GRAPHS, "graph", f"must be one of {GRAPHS}")
        need(self.graph_layers >= 1, "graph_layers", "must be >= 1")
        need(self.graph_heads is None or (self.graph_heads >= 1 and self.hidden_size % self.graph_heads == 0),
             "graph_heads", "must divide hidden_size")
        if self.graph_modalities is not None:
            need(len(self.graph_modalities) >= 1 and all(m in self.modality_dims for m in self.graph_modalities),
                 "graph_modalities", f"must name modalities from {tuple(self.modality_dims)}")
        need(self.window >= 0, "window", "must be >= 0")
        need(self.cross_window >= 0, "cross_window", "must be >= 0")
        need(self.fusion in FUSIONS, "fusion", f"must be one of {FUSIONS}")
        need(self.fusion_layers >= 1, "fusion_layers", "must be >= 1")
        need(self.ffn_mult > 0, "ffn_mult", "must be > 0")
        if self.logit_weights is not None:
            need(set(self.logit_weights) <= set(self.modality_dims), "logit_weights",
                 f"must name modalities from {tuple(self.modality_dims)}")

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.modality_dims)

    @property
    def graph_modality_names(self) -> tuple[str, ...]:
        return self.modalities if self.graph_modalities is None else tuple(
            m for m in self.modalities if m in self.graph_modalities
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["modality_dims"] = dict(self.modality_dims)
        data["denoise_modalities"] = list(self.denoise_modalities)
        if self.graph_modalities is not None:
            data["graph_modalities"] = list(self.graph_modalities)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ReDiFuConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"model.{unknown[0]}: unknown model option")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


@dataclass
class ReDiFuOutput:
    """Model output.

    Attributes:
        logits: ``(B, N, C)`` prediction logits per utterance.
        modality_logits: per modality ``(B, N, C)``, from the auxiliary classifiers.
        attention: named attention maps and gates (``return_attention=True`` only).
        graph_attention: relational graph attention weights, its modalities and relations
            named after the model's graph modalities (``return_attention=True`` only).
        fusion_gates: per auxiliary modality, one ``(B, N, D)`` gate in ``[0, 1]`` per fusion
            layer: how much of what the text attended to in that modality enters the text stream
            (text-guided fusion with ``return_attention=True`` only; else empty).
    """

    logits: Tensor
    modality_logits: dict[str, Tensor]
    attention: dict[str, Tensor] = field(default_factory=dict)
    graph_attention: GraphAttention | None = None
    fusion_gates: dict[str, tuple[Tensor, ...]] = field(default_factory=dict)


class ModalityEncoder(nn.Module):
    """Standardise raw features with training statistics, then project to the model size.

    ``h = LN(W ((x - mu) / sigma))``; ``mu`` and ``sigma`` are buffers saved with the model, so
    prediction on new data applies exactly the standardisation used in training.

    Shapes:
        - x: ``(B, N, D_in)`` -> ``(B, N, D)``
    """

    def __init__(self, *, in_dim: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(in_dim))
        self.register_buffer("feature_std", torch.ones(in_dim))
        self.proj = nn.Linear(in_dim, dim)
        self.norm = nn.LayerNorm(dim)

    def reset_parameters(self) -> None:
        self.proj.reset_parameters()
        self.norm.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj((x - self.feature_mean) / self.feature_std))


class ReDiFu(nn.Module):
    """The ReDiFu model. See the module docstring for the pipeline.

    Args:
        config (ReDiFuConfig): The frozen model configuration.
        activation_checkpointing (bool, optional): Recompute each denoiser, graph and fusion
            layer's activations in backward instead of keeping them (less memory, one more
            forward pass per step; same results, dropout masks included).
            (default: ``False``)
        fast_dropout (bool, optional): On the CPU, draw the attention-dropout masks four to a
            random word (:func:`redifu.nn.kernels.dropout_masks.fast_keep_mask`): the same
            distribution, other draws than PyTorch's dropout, so a seed gives other (not worse)
            results than without it. (default: ``False``)

        Both are training-time choices that the training code passes in
        (``training.activation_checkpointing``, ``training.fast_dropout``); they build the same
        parameters and change nothing in evaluation, so they are not part of the config nor of
        checkpoints, and a checkpoint loads without them.

    Shapes:
        - features: per modality ``(B, N, D_m)`` float; every configured modality is required
        - speakers: ``(B, N)`` long; mask: ``(B, N)`` bool, True = real utterance
        - output logits: ``(B, N, C)``
    """

    def __init__(self, config: ReDiFuConfig, *, activation_checkpointing: bool = False,
                 fast_dropout: bool = False) -> None:
        super().__init__()
        self.config = config
        self.activation_checkpointing = activation_checkpointing
        self.fast_dropout = fast_dropout
        dim = config.hidden_size
        rotary = config.position_encoding == "rotary"
        self.encoders = nn.ModuleDict({m: ModalityEncoder(in_dim=d, dim=dim) for m, d in config.modality_dims.items()})
        self.speaker_embedding = nn.Embedding(config.num_speakers, dim) if config.speaker_embedding else None
        self.position = SinusoidalPositionalEncoding(dim=dim) if config.position_encoding == "sinusoidal" else None
        self.input_dropout = nn.Dropout(config.dropout)
        self.recurrent = nn.ModuleDict()
        if config.recurrent == "bigru":
            self.recurrent.update({m: DialogueGRU(dim=dim, dropout=config.dropout) for m in config.modalities})
        self.denoisers = nn.ModuleDict()
        if config.denoiser != "off":
            for m in config.modalities:
                if m in config.denoise_modalities:
                    self.denoisers[m] = DifferentialDenoiser(
                        dim=dim,
                        num_heads=config.denoiser_heads or config.num_heads,
                        num_layers=config.denoiser_layers,
                        variant=config.denoiser,
                        dropout=config.dropout,
                        ffn_mult=config.ffn_mult,
                        rotary=rotary,
                        fast_dropout=fast_dropout,
                        activation_checkpointing=activation_checkpointing,
                    )
        self.graph = None
        if config.graph != "off":
            self.graph = RelationGraph(
                dim=dim,
                num_modalities=len(config.graph_modality_names),
                num_layers=config.graph_layers,
                num_heads=config.graph_heads or config.num_heads,
                window=config.window,
                cross_modal=config.graph == "modality+cross" and len(config.graph_modality_names) > 1,
                cross_window=config.cross_window,
                speaker_aware=config.speaker_aware,
                dropout=config.dropout,
                activation_checkpointing=activation_checkpointing,
                causal=config.causal,
            )
        self.fusion = build_fusion(
            config.fusion,
            dim=dim,
            modalities=config.modalities,
            num_layers=config.fusion_layers,
            num_heads=config.num_heads,
            dropout=config.dropout,
            ffn_mult=config.ffn_mult,
            rotary=rotary,
            cross_rotary=config.cross_rotary,
            aligned=config.fusion_aligned,
            fused_output=config.logit_weights is None,
            fast_dropout=fast_dropout,
            activation_checkpointing=activation_checkpointing,
        )
        # Only the parts a config uses are built: with fixed logit weights the fused classifier
        # would get no gradient (and plain DDP refuses parameters without one).
        self.classifier = None if config.logit_weights is not None else nn.Sequential(
            nn.Linear(dim, dim), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(dim, config.num_classes)
        )
        self.modality_classifiers = nn.ModuleDict({m: nn.Linear(dim, config.num_classes) for m in config.modalities})
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise every learnable parameter (feature statistics are kept)."""
        for encoder in self.encoders.values():
            encoder.reset_parameters()
        if self.speaker_embedding is not None:
            nn.init.normal_(self.speaker_embedding.weight, std=0.02)
        for module in (*self.recurrent.values(), *self.denoisers.values(), self.graph, self.fusion):
            if module is not None:
                module.reset_parameters()
        for module in (*(self.classifier or ()), *self.modality_classifiers.values()):
            if isinstance(module, nn.Linear):
                module.reset_parameters()

    @torch.no_grad()
    def set_feature_statistics(self, statistics: Mapping[str, tuple[Tensor, Tensor]]) -> None:
        """Set each modality's standardisation (mean, std) from the training split."""
        for modality, (mean, std) in statistics.items():
            encoder = self.encoders[modality]
            encoder.feature_mean.copy_(torch.as_tensor(mean, dtype=encoder.feature_mean.dtype))
            std = torch.as_tensor(std, dtype=encoder.feature_std.dtype)
            # A feature constant in training carries nothing: scale 1 keeps it from being
            # multiplied by 1e6 when it varies at test time.
            encoder.feature_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        features: Mapping[str, Tensor],
        speakers: Tensor,
        mask: Tensor,
        *,
        return_attention: bool = False,
    ) -> ReDiFuOutput:
        config = self.config
        missing = [m for m in config.modalities if m not in features]
        if missing:
            raise ValueError(f"features: modality {missing[0]!r} is missing; this model takes {config.modalities}")
        mask = mask.bool()
        keep = mask.unsqueeze(-1).to(features["text"].dtype)  # (B, N, 1)
        attention: dict[str, Tensor] = {}
        # Causal: which earlier utterances each one may attend to, in every attention layer.
        attention_mask = causal_attention_mask(mask, window=config.attention_window) if config.causal else None

        # record_function labels name each stage in torch.profiler traces (benchmarks/profile_components.py).
        streams: dict[str, Tensor] = {}
        with record_function("redifu.encoders"):
            for m in config.modalities:
                h = self.encoders[m](features[m])  # (B, N, D)
                if self.speaker_embedding is not None:
                    h = h + self.speaker_embedding(speakers)  # ids checked by the data and prediction readers
                if self.position is not None:
                    h = self.position(h)
                streams[m] = self.input_dropout(h) * keep

        if self.recurrent:
            with record_function("redifu.recurrent"):
                for m, recurrent in self.recurrent.items():
                    streams[m] = recurrent(streams[m], mask)

        with record_function("redifu.denoiser"):
            for m, denoiser in self.denoisers.items():
                streams[m], maps = denoiser(streams[m], mask, attention_mask=attention_mask,
                                            return_attention=return_attention)
                if maps is not None:
                    attention.update({f"denoiser.{m}.layer{i}": a for i, a in enumerate(maps)})

        graph_attention = None
        if self.graph is not None:
            names = config.graph_modality_names
            with record_function("redifu.graph"):
                graphed, graph_attention = self.graph(
                    [streams[m] for m in names], speakers, mask, return_attention=return_attention
                )
            streams.update(zip(names, graphed))
            if graph_attention is not None:
                graph_attention = graph_attention.with_modality_names(names)

        with record_function("redifu.fusion"):
            fused = self.fusion(streams, mask, attention_mask=attention_mask, return_attention=return_attention)
        attention.update({f"fusion.{k}": v for k, v in fused.attention.items()})
        gated = [m for m in config.modalities[1:] if f"layer0.gate_{m}" in fused.attention]
        fusion_gates = {m: tuple(fused.attention[f"layer{i}.gate_{m}"] for i in range(config.fusion_layers))
                        for m in gated}  # TextGuidedFusion names its gates layer{i}.gate_{m}
        with record_function("redifu.classifiers"):
            modality_logits = {m: self.modality_classifiers[m](fused.streams[m]) for m in config.modalities}
            if config.logit_weights is not None:
                logits = sum(w * modality_logits[m] for m, w in config.logit_weights.items())
            else:
                logits = self.classifier(fused.fused)
        return ReDiFuOutput(
            logits=logits,
            modality_logits=modality_logits,
            attention=attention if return_attention else {},
            graph_attention=graph_attention if return_attention else None,
            fusion_gates=fusion_gates if return_attention else {},
        )
