"""The limits and batching options of ``redifu serve``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServeSettings"]

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServeSettings:
    """What one server accepts and how it batches.

    Args:
        max_body_bytes: Largest request body (413 beyond it, refused while it arrives).
            Default 8 MiB: room for a few hundred utterances with inline feature vectors.
        max_utterances: Most utterances in one request (default 256; MELD's longest dialogue
            has 33, IEMOCAP's 110).
        max_batch: Most dialogues (requests) in one forward pass; 1 turns batching off.
        batch_wait_ms: How long the first request of a batch waits for others to join it.
        max_sessions: Most live sessions (``/live`` WebSocket connections) at once; one more is
            accepted and closed with code 1013 and the reason.
        session_idle_s: A live session that sends nothing for this long is closed (code 1001).
    """

    max_body_bytes: int = 8 * MIB
    max_utterances: int = 256
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    max_sessions: int = 32
    session_idle_s: float = 300.0

    def __post_init__(self) -> None:
        if not 0 < self.session_idle_s <= 86400:
            raise ValueError(f"session_idle_s must be in (0, 86400], got {self.session_idle_s!r}")
        for name in ("max_body_bytes", "max_utterances", "max_batch", "max_sessions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise ValueError(f"batch_wait_ms must be between 0 and 1000, got {self.batch_wait_ms!r}")

    def limits(self) -> dict[str, int]:
        """The limits a client must keep to (``GET /model``)."""
        return {"max_body_bytes": self.max_body_bytes, "max_utterances": self.max_utterances}
