"""Training health between log steps: throughput and data wait over a window, and the collapse watch."""

from __future__ import annotations

import math
import time


class ThroughputWindow:
    """Images/s, tokens/s and the fraction of wall time spent waiting for data since the last ``read``."""

    def __init__(self, images_per_step: int, tokens_per_image: int):
        self.images_per_step, self.tokens_per_image = images_per_step, tokens_per_image
        self._restart()

    def _restart(self) -> None:
        self.start, self.steps, self.wait_seconds = time.perf_counter(), 0, 0.0

    def add_step(self, wait_seconds: float) -> None:
        """Count one step, of which ``wait_seconds`` were spent blocked on the data stream."""
        self.steps += 1
        self.wait_seconds += wait_seconds

    def read(self) -> dict[str, float]:
        """The window's metrics; the next window starts now."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        images = self.steps * self.images_per_step
        metrics = {"images_per_s": images / elapsed, "tokens_per_s": images * self.tokens_per_image / elapsed,
                   "data_wait_fraction": self.wait_seconds / elapsed}
        self._restart()
        return metrics


def collapse_threshold(embed_dim: int, fraction: float) -> float:
    """``fraction`` of ``1/sqrt(D)``, the per-dimension std of features spread over the sphere."""
    return fraction / math.sqrt(embed_dim)


class CollapseWatch:
    """Flags a student feature std below ``collapse_threshold`` once ``grace_steps`` of the stage have run
    (features start bunched together at initialisation)."""

    def __init__(self, embed_dim: int, fraction: float, grace_steps: int):
        self.threshold = collapse_threshold(embed_dim, fraction)
        self.grace_steps = grace_steps

    def collapsed(self, stage_step: int, feature_std: float) -> bool:
        return stage_step >= self.grace_steps and feature_std < self.threshold
