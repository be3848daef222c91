"""Capped exponential backoff with full jitter, for retrying lost API or kubelet connections."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial: float = 0.1
    maximum: float = 10.0
    factor: float = 2.0
    _attempt: int = field(default=0, init=False)

    def next_delay(self) -> float:
        """Delay before the next attempt: uniform in [0, min(maximum, initial * factor**n)]."""
        ceiling = min(self.maximum, self.initial * self.factor**self._attempt)
        self._attempt += 1
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography

    def reset(self) -> None:
        """Call after a success so the next failure starts from ``initial`` again."""
        self._attempt = 0

    @property
    def attempts(self) -> int:
        return self._attempt
