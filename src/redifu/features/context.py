"""The input a context-aware text encoder reads for one utterance: the utterance, marked, with
the dialogue around it and the speakers' names.

The construction follows EmoBERTa (Kim & Vossen, 2021) and CoMPM (Lee & Lee, NAACL 2022): every
utterance is written ``"<speaker>: <text>"``; the target utterance is the first segment and the
context the second, so the encoder's segment (token type) embeddings mark which one is the
target, and pooling reads the target's tokens only::

    [CLS] target [SEP] past_k [SEP] ... past_1 [SEP] future_1 [SEP] ... future_m [SEP]

(``[CLS]``/``[SEP]`` are the tokenizer's own start and separator tokens: ``<s>``/``</s>`` for
RoBERTa.) Past utterances are added nearest first while they fit in ``max_length`` tokens,
then future ones, so the oldest context is what a long dialogue loses. ``future=0`` gives a
causal construction: an utterance's input never depends on a later one.

One :class:`ContextSpec` is recorded with a fine-tuned encoder, so that encoding a new
conversation builds exactly the inputs it was fine-tuned on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

__all__ = ["ContextSpec", "ContextInput", "build_dialogue_inputs", "future_context_problem"]


@dataclass(frozen=True)
class ContextSpec:
    """How an utterance's encoder input is built from its dialogue.

    Args:
        past: Preceding utterances to include at most (``0``: none).
        future: Following utterances to include at most (``0``: causal).
        max_length: Token budget of the whole input, special tokens included.
        speakers: Prefix every utterance with ``"<speaker>: "``.
        max_target_tokens: The target's own tokens are cut to this many (a very long utterance
            still leaves room for context); ``None``: ``max_length // 2``.
    """

    past: int = 8
    future: int = 0
    max_length: int = 128
    speakers: bool = True
    max_target_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.past < 0 or self.future < 0:
            raise ValueError(f"past and future must be >= 0, got {self.past} and {self.future}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {self.max_length}")
        if self.max_target_tokens is not None and not 1 <= self.max_target_tokens <= self.max_length - 3:
            raise ValueError(f"max_target_tokens must be in [1, max_length - 3], got {self.max_target_tokens}")

    @property
    def target_budget(self) -> int:
        return self.max_target_tokens or self.max_length // 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ContextSpec":
        known = {k: data[k] for k in ("past", "future", "max_length", "speakers", "max_target_tokens") if k in data}
        return cls(**known)


@dataclass(frozen=True)
class ContextInput:
    """One utterance's encoder input: token ids, segment ids and the target's token positions.

    Shapes:
        ``input_ids``, ``token_type_ids`` and ``target_mask`` have the input's length ``L``.
    """

    input_ids: tuple[int, ...]
    token_type_ids: tuple[int, ...]
    target_mask: tuple[int, ...]

    def key(self) -> str:
        """A text that identifies the input exactly (the feature cache's key)."""
        return " ".join(map(str, self.input_ids)) + "|" + "".join(map(str, self.token_type_ids))


def _special_ids(tokenizer: Any) -> tuple[int, int]:
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    separator = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if start is None or separator is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no start/separator tokens (cls/bos, sep/eos)")
    return int(start), int(separator)


def build_dialogue_inputs(
    tokenizer: Any,
    dialogue: Sequence[tuple[str, str]],
    spec: ContextSpec,
    *,
    segment_ids: bool = True,
) -> list[ContextInput]:
    """The encoder input of every utterance of ``dialogue`` (``(speaker, text)`` pairs, in order).

    Args:
        tokenizer: A Hugging Face tokenizer (each utterance is tokenized once).
        dialogue: The dialogue's utterances.
        spec: The construction.
        segment_ids: Give the context segment token type 1 (models with two segment embeddings,
            BERT's family); ``False`` keeps every token type 0 (RoBERTa's family has one).
    """
    start, separator = _special_ids(tokenizer)
    written = [f"{speaker}: {text}" if spec.speakers else text for speaker, text in dialogue]
    pieces = [list(ids) for ids in tokenizer(written, add_special_tokens=False)["input_ids"]] if written else []
    inputs = []
    context_type = 1 if segment_ids else 0
    for t, target in enumerate(pieces):
        target = target[: spec.target_budget]
        budget = spec.max_length - len(target) - 2  # [CLS] target [SEP]
        past: list[list[int]] = []
        for j in range(t - 1, max(t - 1 - spec.past, -1), -1):  # nearest first
            if len(pieces[j]) + 1 > budget:
                break
            past.insert(0, pieces[j])
            budget -= len(pieces[j]) + 1
        future: list[list[int]] = []
        for j in range(t + 1, min(t + 1 + spec.future, len(pieces))):
            if len(pieces[j]) + 1 > budget:
                break
            future.append(pieces[j])
            budget -= len(pieces[j]) + 1
        ids = [start, *target, separator]
        types = [0] * len(ids)
        mask = [0] + [1] * len(target) + [0] if target else [1, 0]  # an empty target: its [CLS]
        for piece in past + future:
            ids.extend([*piece, separator])
            types.extend([context_type] * (len(piece) + 1))
            mask.extend([0] * (len(piece) + 1))
        inputs.append(ContextInput(tuple(ids), tuple(types), tuple(mask)))
    return inputs


def future_context_problem(extractor: Mapping[str, Any] | None) -> str | None:
    """Why features from the recorded text ``extractor`` (a data manifest's or checkpoint's
    ``extractors.text``) cannot feed a causal model, or ``None``: an encoder whose context
    construction reads later utterances (``settings.context.future > 0``) leaks them into every
    utterance's vector."""
    settings = (extractor or {}).get("settings") or {}
    context = settings.get("context") if isinstance(settings, Mapping) else None
    future = int((context or {}).get("future", 0) or 0) if isinstance(context, Mapping) else 0
    if future <= 0:
        return None
    return (f"the text features come from {extractor.get('name', 'an encoder')!r}, whose context reads {future} later "
            f"utterance(s) (extractors.text.settings.context.future={future}); a causal model needs past-only "
            "features (redifu text finetune with future=0)")
