"""A seeded generator of synthetic multimodal dialogues (not real data).

The generator exists so that redifu can be trained, tested and benchmarked without the
licensed IEMOCAP / MELD feature files, on data whose generative story exercises each part of
the ReDiFu model. It produces a :class:`~redifu.data.dialogue.DialogueCorpus` with the same
shapes as the standard feature pickles (see ``docs/SYNTHETIC.md``):

* **Context matters.** Emotions follow a Markov chain over the utterances of a dialogue: a
  speaker keeps their own previous emotion with probability ``persistence``, takes up the
  emotion the most recent *other* speaker showed with probability ``contagion``, and otherwise
  draws a fresh emotion from ``class_prior``. Neighbouring utterances, especially the same
  speaker's, therefore carry evidence about an utterance's label (what the relation graph uses).
* **Text is strongest but ambiguous.** Text class prototypes come in groups (``text_groups``):
  classes of one group (e.g. happy/excited) have nearby prototypes, so text alone confuses them.
  Each dialogue's speakers also get a random style offset (a nuisance shared by all of that
  speaker's utterances) and every utterance gets latent noise.
* **Audio and visual are weaker and complementary.** Audio prototypes are laid out along an
  arousal axis and visual prototypes along a valence axis (``class_arousal`` /
  ``class_valence``), which separates the class pairs text confuses (what the fusion uses).
* **Audio and visual are noisy.** On random single utterances and on random runs of
  consecutive utterances ("noise bursts"), their vectors are overwhelmed by large-variance
  noise, so a model that takes them at face value is misled and one that uses temporal context
  to discount outliers wins (what the differential denoising targets).
* **Features look like pretrained features.** Each modality lives in a ``latent_dim``-dimensional
  latent space, mapped to its feature size by a fixed random projection, plus isotropic noise.

The hidden "world" (prototypes, projections) is derived from the seed alone and shared by the
three splits; the splits are disjoint draws from it. Everything is deterministic given
``(spec, seed)``: same inputs give bit-identical arrays. Each split and modality has its own
random stream, so changing one split's size or dropping a modality leaves the other arrays
unchanged, and disabling noise bursts changes only the burst rows.

Example::

    corpus = make_synthetic_corpus("iemocap", seed=0)
    small = make_synthetic_corpus("meld", seed=1, train_dialogues=20, modalities=("text", "audio"))
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from scipy.special import gammainc

from redifu.data.dialogue import MODALITIES, SPLITS, DatasetMetadata, Dialogue, DialogueCorpus
from redifu.data.registry import entry_for_preset

logger = logging.getLogger(__name__)

__all__ = [
    "PRESETS",
    "SyntheticSpec",
    "SyntheticTruth",
    "make_synthetic_corpus",
    "make_synthetic_corpus_with_truth",
    "speaker_context_mean",
]

# A preset takes its classes (names and order) and speaker slots from the registry entry it is
# shaped like.
_IEMOCAP = entry_for_preset("iemocap")
_MELD = entry_for_preset("meld")


def _iemocap_dims() -> dict[str, int]:
    return {"text": 1024, "audio": 1582, "visual": 342}


@dataclass(frozen=True)
class SyntheticSpec:
    """Every knob of the synthetic generator. Defaults reproduce the ``"iemocap"`` preset.

    Per-class tuples are in ``class_names`` order. Latent quantities are in units of the
    per-utterance latent noise, which has standard deviation 1 in every latent direction.

    Args:
        name (str): Preset name, reported in the corpus metadata. (default: ``"iemocap"``)
        class_names (tuple[str, ...]): Emotion names in label-index order.
        class_prior (tuple[float, ...]): Probability of each class when an emotion is drawn
            fresh; also the marginal label distribution. Must sum to 1.
        text_groups (tuple[int, ...]): Group id per class; classes sharing a group have nearby
            text prototypes, so text alone confuses them. (default: happy/excited,
            angry/frustrated, sad/neutral)
        class_valence (tuple[float, ...]): Valence per class, in ``[-1, 1]``; the visual
            prototypes are laid out along this axis.
        class_arousal (tuple[float, ...]): Arousal per class, in ``[-1, 1]``; the audio
            prototypes are laid out along this axis.
        num_speakers (int): Speaker slots; speaker indices are in ``[0, num_speakers)``.
            (default: ``2``)
        speakers_per_dialogue (tuple[int, int]): Inclusive range of participants per dialogue
            (capped at the dialogue length). Participants occupy slots ``0 .. k-1``.
            (default: ``(2, 2)``)
        speaker_count_decay (float): ``P(k) ∝ decay ** (k - k_min)`` over that range; small
            values favour few participants. (default: ``0.5``)
        turn_switch_prob (float): Probability that the next utterance comes from a different
            participant (chosen uniformly among the others). (default: ``0.8``)
        train_dialogues (int): Dialogues in the ``train`` split. (default: ``108``)
        dev_dialogues (int): Dialogues in the ``dev`` split. (default: ``12``)
        test_dialogues (int): Dialogues in the ``test`` split. (default: ``31``)
        length_range (tuple[int, int]): Inclusive range of utterances per dialogue.
            (default: ``(20, 110)``)
        mean_length (float): Mean dialogue length. Lengths are ``k_min + round(G)`` with
            ``G ~ Gamma(length_shape, scale)``, draws above the maximum redrawn; the scale is
            solved so that the truncated distribution has this mean. (default: ``48.0``)
        length_shape (float): Gamma shape of the length distribution; larger is more
            concentrated. (default: ``2.0``)
        modality_dims (Mapping[str, int]): Feature size per modality; must contain all three
            modalities (a corpus may then keep a subset). (default: text 1024, audio 1582,
            visual 342, the sizes of the standard IEMOCAP features)
        latent_dim (int): Size of each modality's latent space. (default: ``32``)
        persistence (float): Probability that a speaker keeps their own previous emotion.
            (default: ``0.65``)
        contagion (float): Probability that a speaker takes up the emotion of the most recent
            utterance by another speaker. ``persistence + contagion <= 1``; the rest of the
            time (or when the chosen event has no earlier utterance to copy) the emotion is
            drawn from ``class_prior``. (default: ``0.2``)
        text_signal (float): Distance scale of the text group prototypes. (default: ``1.7``)
        text_pair_separation (float): Within-group prototype spread, relative to
            ``text_signal``. (default: ``0.35``)
        audio_signal (float): Scale of the audio arousal axis. (default: ``2.5``)
        visual_signal (float): Scale of the visual valence axis. (default: ``1.6``)
        specific_signal (float): Class-specific random part of the audio and visual
            prototypes, relative to their axis scale. (default: ``0.3``)
        style_scale (float): Standard deviation, per latent direction, of each dialogue
            speaker's style offset (shared by all their utterances, all modalities).
            (default: ``0.3``)
        feature_noise (float): Standard deviation of the isotropic noise added after the
            projection to feature space, relative to a unit-latent row. (default: ``1.0``)
        burst_modalities (tuple[str, ...]): Modalities hit by noise bursts; ``()`` disables
            bursts. Text is never hit. (default: ``("audio", "visual")``)
        burst_utterance_prob (float): Probability that a single utterance is hit, per burst
            modality, independently. (default: ``0.08``)
        burst_run_start_prob (float): Probability, per utterance and burst modality, that a run
            of consecutive hit utterances starts there. (default: ``0.03``)
        burst_run_mean_length (float): Mean run length (geometric, at least 1). (default: ``5.0``)
        burst_scale (float): Standard deviation of the burst noise relative to the clean
            latent noise and feature noise; the clean row is kept underneath. (default: ``4.0``)
    """

    name: str = "iemocap"
    class_names: tuple[str, ...] = _IEMOCAP.classes
    class_prior: tuple[float, ...] = (0.09, 0.15, 0.23, 0.15, 0.14, 0.24)
    text_groups: tuple[int, ...] = (0, 1, 1, 2, 0, 2)
    class_valence: tuple[float, ...] = (0.8, -0.7, 0.0, -0.7, 0.7, -0.5)
    class_arousal: tuple[float, ...] = (0.2, -0.7, -0.1, 0.8, 0.9, 0.3)
    num_speakers: int = 2
    speakers_per_dialogue: tuple[int, int] = (2, 2)
    speaker_count_decay: float = 0.5
    turn_switch_prob: float = 0.8
    train_dialogues: int = 108
    dev_dialogues: int = 12
    test_dialogues: int = 31
    length_range: tuple[int, int] = (20, 110)
    mean_length: float = 48.0
    length_shape: float = 2.0
    modality_dims: Mapping[str, int] = field(default_factory=_iemocap_dims)
    latent_dim: int = 32
    persistence: float = 0.65
    contagion: float = 0.2
    text_signal: float = 1.7
    text_pair_separation: float = 0.35
    audio_signal: float = 2.5
    visual_signal: float = 1.6
    specific_signal: float = 0.3
    style_scale: float = 0.3
    feature_noise: float = 1.0
    burst_modalities: tuple[str, ...] = ("audio", "visual")
    burst_utterance_prob: float = 0.08
    burst_run_start_prob: float = 0.03
    burst_run_mean_length: float = 5.0
    burst_scale: float = 4.0

    def __post_init__(self) -> None:
        for name in ("class_names", "class_prior", "text_groups", "class_valence", "class_arousal",
                     "speakers_per_dialogue", "length_range", "burst_modalities"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        dims = {k: int(v) for k, v in dict(self.modality_dims).items()}
        object.__setattr__(self, "modality_dims", dims)
        self._validate()

    def _validate(self) -> None:
        num_classes = len(self.class_names)
        if num_classes < 2 or len(set(self.class_names)) != num_classes:
            raise ValueError("class_names must hold at least 2 distinct names")
        for name in ("class_prior", "text_groups", "class_valence", "class_arousal"):
            if len(getattr(self, name)) != num_classes:
                raise ValueError(f"{name} must have one entry per class ({num_classes}), "
                                 f"got {len(getattr(self, name))}")
        prior = np.asarray(self.class_prior, dtype=np.float64)
        if (prior <= 0).any() or abs(prior.sum() - 1.0) > 1e-6:
            raise ValueError(
                f"class_prior must be positive and sum to 1, got sum {prior.sum():.6f}"
            )
        if self.num_speakers < 1:
            raise ValueError(f"num_speakers must be >= 1, got {self.num_speakers}")
        lo, hi = self.speakers_per_dialogue
        if not 1 <= lo <= hi <= self.num_speakers:
            raise ValueError("speakers_per_dialogue must satisfy 1 <= min <= max <= "
                             f"num_speakers, got {self.speakers_per_dialogue}")
        lo, hi = self.length_range
        if not 1 <= lo <= hi:
            raise ValueError(f"length_range must satisfy 1 <= min <= max, got {self.length_range}")
        if lo < hi:
            shape = self.length_shape
            reach = lo + (hi - lo + 0.5) * shape / (shape + 1.0)  # truncated mean as scale -> inf
            if not lo < self.mean_length < reach:
                raise ValueError(
                    f"mean_length must be in ({lo}, {reach:.2f}) for length_range "
                    f"{self.length_range} and length_shape {shape}, got {self.mean_length}"
                )
        for name in ("train_dialogues", "dev_dialogues", "test_dialogues"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if set(self.modality_dims) != set(MODALITIES) or min(self.modality_dims.values()) < 1:
            raise ValueError(f"modality_dims must give a positive size for each of {MODALITIES}, "
                             f"got {self.modality_dims}")
        if self.latent_dim < 2:
            raise ValueError(f"latent_dim must be >= 2, got {self.latent_dim}")
        for name in ("speaker_count_decay", "length_shape", "burst_run_mean_length"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.burst_run_mean_length < 1:
            raise ValueError(
                f"burst_run_mean_length must be >= 1, got {self.burst_run_mean_length}"
            )
        for name in ("turn_switch_prob", "persistence", "contagion", "burst_utterance_prob",
                     "burst_run_start_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.persistence + self.contagion > 1.0 + 1e-12:
            raise ValueError("persistence + contagion must be <= 1, got "
                             f"{self.persistence} + {self.contagion}")
        for name in ("text_signal", "text_pair_separation", "audio_signal", "visual_signal",
                     "specific_signal", "style_scale", "feature_noise", "burst_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        bad = [m for m in self.burst_modalities if m not in ("audio", "visual")]
        if bad:
            raise ValueError(f"burst_modalities may only name 'audio' and 'visual', got {bad[0]!r}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def num_dialogues(self, split: str) -> int:
        return int(getattr(self, f"{split}_dialogues"))


PRESETS: dict[str, SyntheticSpec] = {
    # IEMOCAP-like: 6 classes, dyadic, long dialogues, 120 train dialogues minus a 10% dev split.
    "iemocap": SyntheticSpec(),
    # MELD-like: 7 classes, up to 9 speakers, short dialogues, neutral-heavy prior.
    "meld": SyntheticSpec(
        name="meld",
        class_names=_MELD.classes,
        class_prior=(0.47, 0.12, 0.03, 0.07, 0.17, 0.03, 0.11),
        # neutral/sadness, surprise/fear, joy alone, disgust/anger
        text_groups=(0, 1, 1, 0, 2, 3, 3),
        class_valence=(0.0, 0.4, -0.6, -0.7, 0.8, -0.6, -0.7),
        class_arousal=(-0.2, 0.8, 0.6, -0.6, 0.5, 0.0, 0.9),
        num_speakers=_MELD.speaker_slots,
        speakers_per_dialogue=(2, _MELD.speaker_slots),
        speaker_count_decay=0.45,
        turn_switch_prob=0.85,
        train_dialogues=1039,
        dev_dialogues=114,
        test_dialogues=280,
        length_range=(1, 24),
        mean_length=9.6,
        length_shape=1.6,
        modality_dims={"text": 1024, "audio": 300, "visual": 342},
        persistence=0.7,
        contagion=0.15,
        # Shorter dialogues and a neutral-heavy prior make text alone easier; weaken it and
        # strengthen the visual valence axis to keep the same calibration margins.
        text_signal=1.5,
        visual_signal=2.0,
    ),
}


@dataclass(frozen=True)
class SyntheticTruth:
    """Hidden variables behind one synthetic dialogue (for calibration and diagnostics).

    Args:
        latents: Per modality the clean latent vectors (prototype + style + latent noise,
            before bursts and projection), ``float32`` of shape ``(N, latent_dim)``.
        bursts: Per burst modality a ``bool`` mask of shape ``(N,)``, true where a noise
            burst hit the utterance.
    """

    latents: Mapping[str, np.ndarray]
    bursts: Mapping[str, np.ndarray]


def make_synthetic_corpus(
    spec: SyntheticSpec | str = "iemocap",
    *,
    seed: int = 0,
    modalities: Sequence[str] = MODALITIES,
    **overrides,
) -> DialogueCorpus:
    """Generate a synthetic corpus with splits ``train``, ``dev`` and ``test``.

    Args:
        spec (SyntheticSpec | str): A spec or the name of one of :data:`PRESETS`.
            (default: ``"iemocap"``)
        seed (int): Seed of the hidden world and of all three splits. (default: ``0``)
        modalities (Sequence[str]): Modalities to keep; must contain ``"text"``.
            (default: all three)
        **overrides: Replacement values for fields of the spec, e.g. ``train_dialogues=10``.

    Returns:
        DialogueCorpus: validated; ``float32`` features, ``int64`` speakers and labels, ids like
        ``"train_0007"``.

    Raises:
        ValueError: unknown preset, unknown override field (named), or an invalid value.
    """
    corpus, _ = make_synthetic_corpus_with_truth(
        spec, seed=seed, modalities=modalities, **overrides
    )
    return corpus


def make_synthetic_corpus_with_truth(
    spec: SyntheticSpec | str = "iemocap",
    *,
    seed: int = 0,
    modalities: Sequence[str] = MODALITIES,
    **overrides,
) -> tuple[DialogueCorpus, dict[str, list[SyntheticTruth]]]:
    """Like :func:`make_synthetic_corpus`, plus the hidden :class:`SyntheticTruth` per dialogue.

    The second value maps each split to a list aligned with ``corpus.splits[split]``; latents
    are returned for every modality, bursts for every burst modality, whatever ``modalities``.
    """
    spec = _resolve_spec(spec, overrides)
    kept = _check_modalities(modalities)
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    world_seq, *split_seqs = np.random.SeedSequence(seed).spawn(1 + len(SPLITS))
    world = _World.build(spec, world_seq)

    splits: dict[str, list[Dialogue]] = {}
    truths: dict[str, list[SyntheticTruth]] = {}
    for split, split_seq in zip(SPLITS, split_seqs):
        splits[split], truths[split] = _generate_split(spec, world, split, split_seq, kept)

    override_text = ", ".join(f"{k}={v!r}" for k, v in sorted(overrides.items()))
    description = (
        f"SYNTHETIC data (not real recordings) from redifu.data.synthetic, preset {spec.name!r}, "
        f"seed {seed}" + (f", overrides: {override_text}" if override_text else "") + "."
    )
    metadata = DatasetMetadata(
        name=f"synthetic-{spec.name}",
        classes=spec.class_names,
        num_speakers=spec.num_speakers,
        modality_dims={m: spec.modality_dims[m] for m in kept},
        description=description,
    )
    corpus = DialogueCorpus(metadata=metadata, splits=splits)
    corpus.validate(source=f"synthetic:{spec.name}")
    logger.debug("generated %s: %s", description,
                 {s: corpus.num_utterances(s) for s in SPLITS})
    return corpus, truths


def speaker_context_mean(
    speakers: np.ndarray, features: np.ndarray, *, window: int = 5
) -> np.ndarray:
    """Mean of the same speaker's other utterances within ``+-window`` positions (zeros if none).

    A cheap stand-in for what a relation graph's same-speaker edges aggregate; the calibration
    baselines in ``benchmarks/synthetic_baselines.py`` and the tests use it.

    Shapes:
        - speakers: ``(N,)``
        - features: ``(N, D)``
        - output: ``(N, D)``, ``float32``
    """
    n = speakers.shape[0]
    offsets = np.arange(n)[:, None] - np.arange(n)[None, :]  # (N, N): i - j
    mask = (np.abs(offsets) <= window) & (offsets != 0) & (speakers[:, None] == speakers[None, :])
    weights = mask.astype(np.float32)
    counts = weights.sum(axis=1, keepdims=True)
    weights /= np.maximum(counts, 1.0)
    return (weights @ features.astype(np.float32)).astype(np.float32)


def _resolve_spec(spec: SyntheticSpec | str, overrides: Mapping) -> SyntheticSpec:
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f"unknown synthetic preset {spec!r}; known: {sorted(PRESETS)}")
        spec = PRESETS[spec]
    elif not isinstance(spec, SyntheticSpec):
        raise ValueError(
            f"spec must be a SyntheticSpec or a preset name, got {type(spec).__name__}"
        )
    known = {f.name for f in dataclasses.fields(SyntheticSpec)}
    for name in overrides:
        if name not in known:
            raise ValueError(
                f"unknown SyntheticSpec field {name!r} in overrides; known: {sorted(known)}"
            )
    return dataclasses.replace(spec, **overrides) if overrides else spec


def _check_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
    if isinstance(modalities, str):
        modalities = (modalities,)
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise ValueError(f"modalities: unknown modality {unknown[0]!r}; known: {MODALITIES}")
    if "text" not in modalities:
        raise ValueError("modalities must contain 'text'")
    return tuple(m for m in MODALITIES if m in modalities)


def _unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((rows, dim))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@dataclass(frozen=True)
class _World:
    """The hidden parameters shared by all splits: latent prototypes and projections."""

    prototypes: dict[str, np.ndarray]  # per modality (C, L)
    projections: dict[str, np.ndarray]  # per modality (L, D), float32

    @classmethod
    def build(cls, spec: SyntheticSpec, seq: np.random.SeedSequence) -> "_World":
        proto_seq, *proj_seqs = seq.spawn(1 + len(MODALITIES))
        rng = np.random.default_rng(proto_seq)
        latent, num_classes = spec.latent_dim, spec.num_classes

        groups = np.unique(np.asarray(spec.text_groups), return_inverse=True)[1]
        group_centres = _unit_rows(rng, int(groups.max()) + 1, latent)
        text = spec.text_signal * (
            group_centres[groups] + spec.text_pair_separation * _unit_rows(rng, num_classes, latent)
        )
        arousal_axis, valence_axis = _unit_rows(rng, 2, latent)
        arousal = np.asarray(spec.class_arousal)[:, None]
        valence = np.asarray(spec.class_valence)[:, None]
        audio = spec.audio_signal * (
            arousal * arousal_axis + spec.specific_signal * _unit_rows(rng, num_classes, latent)
        )
        visual = spec.visual_signal * (
            valence * valence_axis + spec.specific_signal * _unit_rows(rng, num_classes, latent)
        )
        prototypes = {"text": text, "audio": audio, "visual": visual}

        projections = {}
        for modality, proj_seq in zip(MODALITIES, proj_seqs):
            proj_rng = np.random.default_rng(proj_seq)
            # Entries N(0, 1/L): a unit-variance latent gives unit-variance features.
            projections[modality] = (
                proj_rng.standard_normal((latent, spec.modality_dims[modality]), dtype=np.float32)
                / np.float32(np.sqrt(latent))
            )
        return cls(prototypes=prototypes, projections=projections)


def _length_scale(spec: SyntheticSpec) -> float:
    """Gamma scale whose truncation to ``G < hi - lo + 1/2`` has mean ``mean_length - lo``."""
    lo, hi = spec.length_range
    shape, cut, target = spec.length_shape, hi - lo + 0.5, spec.mean_length - lo

    def truncated_mean(scale: float) -> float:
        # E[G | G < c] = shape * scale * P(shape + 1, c / scale) / P(shape, c / scale)
        x = cut / scale
        return shape * scale * gammainc(shape + 1.0, x) / gammainc(shape, x)

    low, high = 1e-9, 1.0
    while truncated_mean(high) < target:  # the mean grows with the scale
        high *= 2.0
    for _ in range(100):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if truncated_mean(mid) < target else (low, mid)
    return 0.5 * (low + high)


def _draw_lengths(spec: SyntheticSpec, rng: np.random.Generator, count: int) -> np.ndarray:
    lo, hi = spec.length_range
    if lo == hi or count == 0:
        return np.full(count, lo, dtype=np.int64)
    scale = _length_scale(spec)
    lengths = np.empty(count, dtype=np.int64)
    todo = np.arange(count)
    while todo.size:  # redraw lengths above the maximum (truncation, not a spike at hi)
        draws = lo + np.rint(rng.gamma(spec.length_shape, scale, size=todo.size)).astype(np.int64)
        ok = draws <= hi
        lengths[todo[ok]] = draws[ok]
        todo = todo[~ok]
    return lengths


def _draw_participants(
    spec: SyntheticSpec, rng: np.random.Generator, lengths: np.ndarray
) -> np.ndarray:
    lo, hi = spec.speakers_per_dialogue
    counts = np.arange(lo, hi + 1)
    weights = spec.speaker_count_decay ** (counts - lo).astype(np.float64)
    drawn = rng.choice(counts, size=lengths.size, p=weights / weights.sum())
    return np.minimum(drawn, lengths).astype(np.int64)


def _draw_turns_and_emotions(
    spec: SyntheticSpec, rng: np.random.Generator, lengths: np.ndarray, participants: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Speaker per utterance and the emotion Markov chain, for all dialogues of a split."""
    total = int(lengths.sum())
    prior = np.asarray(spec.class_prior, dtype=np.float64)
    switch = (rng.random(total) < spec.turn_switch_prob).tolist()
    pick = rng.random(total).tolist()
    event = rng.random(total).tolist()
    fresh = rng.choice(spec.num_classes, size=total, p=prior / prior.sum()).tolist()
    persist_cut = spec.persistence
    contagion_cut = spec.persistence + spec.contagion

    speakers = [0] * total
    labels = [0] * total
    t = 0
    for length, k in zip(lengths.tolist(), participants.tolist()):
        last_label = [-1] * k  # each participant's most recent emotion
        current = min(int(pick[t] * k), k - 1)
        start = t
        for i in range(length):
            if i > 0 and k > 1 and switch[t]:
                other = min(int(pick[t] * (k - 1)), k - 2)
                current = other + (other >= current)  # uniform among the other participants
            other_label = -1  # emotion of the most recent utterance by another speaker
            for j in range(t - 1, start - 1, -1):
                if speakers[j] != current:
                    other_label = labels[j]
                    break
            u = event[t]
            if u < persist_cut and last_label[current] >= 0:
                label = last_label[current]
            elif persist_cut <= u < contagion_cut and other_label >= 0:
                label = other_label
            else:
                label = fresh[t]
            speakers[t] = current
            labels[t] = label
            last_label[current] = label
            t += 1
    return np.asarray(speakers, dtype=np.int64), np.asarray(labels, dtype=np.int64)


def _burst_mask(spec: SyntheticSpec, rng: np.random.Generator, lengths: np.ndarray) -> np.ndarray:
    """Single-utterance hits plus runs of consecutive hits, never crossing a dialogue boundary."""
    total = int(lengths.sum())
    mask = rng.random(total) < spec.burst_utterance_prob
    starts = np.flatnonzero(rng.random(total) < spec.burst_run_start_prob)
    run_lengths = rng.geometric(1.0 / spec.burst_run_mean_length, size=starts.size)
    dialogue_end = np.repeat(np.cumsum(lengths), lengths)  # (total,) exclusive end of own dialogue
    ends = np.minimum(starts + run_lengths, dialogue_end[starts])
    delta = np.zeros(total + 1, dtype=np.int64)
    np.add.at(delta, starts, 1)
    np.add.at(delta, ends, -1)
    return mask | (np.cumsum(delta[:-1]) > 0)


def _generate_split(
    spec: SyntheticSpec,
    world: _World,
    split: str,
    seq: np.random.SeedSequence,
    kept: tuple[str, ...],
) -> tuple[list[Dialogue], list[SyntheticTruth]]:
    count = spec.num_dialogues(split)
    structure_seq, *modality_seqs = seq.spawn(1 + len(MODALITIES))
    rng = np.random.default_rng(structure_seq)
    lengths = _draw_lengths(spec, rng, count)
    participants = _draw_participants(spec, rng, lengths)
    speakers, labels = _draw_turns_and_emotions(spec, rng, lengths, participants)
    total = int(lengths.sum())
    dialogue_index = np.repeat(np.arange(count), lengths)  # (total,)
    latent = spec.latent_dim

    latents: dict[str, np.ndarray] = {}
    bursts: dict[str, np.ndarray] = {}
    features: dict[str, np.ndarray] = {}
    for modality, modality_seq in zip(MODALITIES, modality_seqs):
        latent_seq, feature_seq, burst_seq = modality_seq.spawn(3)
        latent_rng = np.random.default_rng(latent_seq)
        style = spec.style_scale * latent_rng.standard_normal((count, spec.num_speakers, latent))
        clean = (
            world.prototypes[modality][labels]
            + style[dialogue_index, speakers]
            + latent_rng.standard_normal((total, latent))
        ).astype(np.float32)  # (total, L)
        latents[modality] = clean

        hit = None
        if modality in spec.burst_modalities:
            burst_rng = np.random.default_rng(burst_seq)
            hit = _burst_mask(spec, burst_rng, lengths)
            bursts[modality] = hit
        if modality not in kept:
            continue
        z = clean
        feature_rng = np.random.default_rng(feature_seq)
        noise = feature_rng.standard_normal((total, spec.modality_dims[modality]), dtype=np.float32)
        noise *= np.float32(spec.feature_noise)
        if hit is not None and hit.any():
            rows = np.flatnonzero(hit)
            # The clean row stays underneath; a large latent kick plus loud isotropic noise
            # overwhelm it, so per-utterance classifiers are confidently misled.
            z = clean.copy()
            z[rows] += np.float32(spec.burst_scale) * burst_rng.standard_normal(
                (rows.size, latent), dtype=np.float32
            )
            noise[rows] *= np.float32(max(spec.burst_scale, 1.0))
        # einsum without BLAS: a fixed summation order, so the arrays do not depend on the
        # BLAS thread count (float32 GEMM results do).
        x = np.einsum("nl,ld->nd", z, world.projections[modality], optimize=False)  # (total, D)
        x += noise
        features[modality] = x

    bounds = np.cumsum(lengths)[:-1]
    dialogues, truths = [], []
    per_speakers = np.split(speakers, bounds)
    per_labels = np.split(labels, bounds)
    per_features = {m: np.split(features[m], bounds) for m in kept}
    per_latents = {m: np.split(latents[m], bounds) for m in MODALITIES}
    per_bursts = {m: np.split(bursts[m], bounds) for m in bursts}
    for i in range(count):
        dialogues.append(Dialogue(
            dialogue_id=f"{split}_{i:04d}",
            speakers=per_speakers[i],
            labels=per_labels[i],
            features={m: per_features[m][i] for m in kept},
        ))
        truths.append(SyntheticTruth(
            latents={m: per_latents[m][i] for m in MODALITIES},
            bursts={m: per_bursts[m][i] for m in per_bursts},
        ))
    return dialogues, truths
