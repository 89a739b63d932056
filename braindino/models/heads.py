"""Projection head shared by the DINO (CLS) and iBOT (patch) objectives, and the prototype-count rule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from braindino.models.layers import init_linear_layers


@dataclass
class HeadConfig:
    """MLP ``in -> hidden -> ... -> bottleneck``, L2-normalised, then ``n_prototypes`` logits."""

    n_prototypes: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    n_layers: int = 3
    normalize_prototypes: bool = True


class ProjectionHead(nn.Module):
    """Map backbone tokens ``[..., D]`` to prototype logits ``[..., K]``.

    With ``normalize_prototypes`` the prototype rows are L2-normalised at every call (a weight-normalised
    layer with unit gain), so logits are cosine similarities in [-1, 1]. The prototype layer is
    ``self.prototypes``; the optimiser freezes it for the first iterations by name.
    """

    def __init__(self, in_dim: int, config: HeadConfig) -> None:
        super().__init__()
        if config.n_layers < 1:
            raise ValueError(f"a projection head needs n_layers >= 1, got {config.n_layers}")
        dims = [in_dim] + [config.hidden_dim] * (config.n_layers - 1) + [config.bottleneck_dim]
        layers: list[nn.Module] = []
        for index, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if index < config.n_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.prototypes = nn.Linear(config.bottleneck_dim, config.n_prototypes, bias=False)
        self.normalize_prototypes = config.normalize_prototypes
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_linear_layers(self)

    def forward(self, x: Tensor) -> Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        weight = self.prototypes.weight
        if self.normalize_prototypes:
            weight = F.normalize(weight, dim=-1)
        return F.linear(z, weight)


def prototypes_for_dataset(n_slices: int, slices_per_prototype: int = 100, minimum: int = 256, maximum: int = 65536) -> int:
    """Number of prototypes K for a dataset of ``n_slices`` training slices.

    Rule: the next power of two of ``n_slices / slices_per_prototype``, clamped to
    ``[minimum, maximum]``. The paper's ~6.6 M slices reach the full-scale 65,536; a 100 k-slice
    dataset gets 1,024, so every prototype can still attract a meaningful number of samples.
    """
    if n_slices <= 0:
        raise ValueError(f"n_slices must be positive, got {n_slices}")
    target = max(1, math.ceil(n_slices / slices_per_prototype))
    return int(min(maximum, max(minimum, 2 ** math.ceil(math.log2(target)))))
