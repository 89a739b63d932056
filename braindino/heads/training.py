"""Fitting a head on frozen features, with model selection on validation subjects.

For each learning rate of the grid the head trains from the same seed; every ``eval_every`` epochs (and
at the end) it is scored on the validation rows (the task metric, then the validation loss to break
ties, which small validation sets make common) and the best state over all rates and epochs is kept.
Without validation rows nothing can be selected: the first rate's last epoch is kept, and the
``Selection`` says so.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class FitSettings:
    epochs: int = 100
    learning_rates: tuple[float, ...] = (1e-3,)
    weight_decay: float = 1e-4
    batch_size: int = 64
    eval_every: int = 5

    def __post_init__(self) -> None:
        object.__setattr__(self, "learning_rates", tuple(float(lr) for lr in self.learning_rates))
        if self.epochs <= 0 or self.batch_size <= 0 or self.eval_every <= 0 or not self.learning_rates:
            raise ValueError("FitSettings: epochs, batch_size and eval_every must be positive, learning_rates non-empty")


@dataclass(frozen=True)
class Selection:
    learning_rate: float
    epoch: int
    validation_score: float  # NaN when nothing was selected
    selected_on: str  # "validation" or why not


Batches = Callable[[np.random.Generator], Iterable[tuple[Tensor, ...]]]


def fit_selected(make_module: Callable[[], nn.Module], batches: Batches, loss: Callable[[nn.Module, tuple], Tensor],
                 settings: FitSettings, seed: int, score: Callable[[nn.Module], tuple[float, float]] | None = None,
                 higher_is_better: bool = True) -> tuple[nn.Module, Selection]:
    """Train ``make_module()`` on ``batches(rng)`` per epoch with AdamW; keep the state with the best validation
    ``score`` (metric, loss): the best metric, and among equal metrics the lowest loss."""
    best: tuple[tuple[float, float], dict, Selection] | None = None
    rates = settings.learning_rates if score is not None else settings.learning_rates[:1]
    module = None
    for rate in rates:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        module = make_module()
        optimiser = torch.optim.AdamW(module.parameters(), lr=rate, weight_decay=settings.weight_decay)
        for epoch in range(1, settings.epochs + 1):
            module.train()
            for batch in batches(rng):
                optimiser.zero_grad(set_to_none=True)
                value = loss(module, batch)
                if value.requires_grad:
                    value.backward()
                    optimiser.step()
            if score is not None and (epoch % settings.eval_every == 0 or epoch == settings.epochs):
                module.eval()
                metric, validation_loss = score(module)
                key = (ranked(metric if higher_is_better else -metric), ranked(-validation_loss))
                if best is None or key > best[0]:
                    best = (key, copy.deepcopy(module.state_dict()), Selection(rate, epoch, float(metric), "validation"))
    assert module is not None
    module.eval()
    if best is None:
        return module, Selection(rates[0], settings.epochs, float("nan"), "no validation subjects: last epoch")
    module.load_state_dict(best[1])
    return module, best[2]


def ranked(value: float) -> float:
    """A comparable value: NaN (undefined on this validation set) ranks below everything."""
    return float(value) if np.isfinite(value) else -np.inf


def minibatches(rows: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled row indices cut into batches of ``batch_size`` (the last may be smaller)."""
    order = rng.permutation(rows)
    return [order[start:start + batch_size] for start in range(0, rows, batch_size)]
