"""Whole-batch multi-crop augmentation in PyTorch, on whatever device the slices live on.

Same semantics as ``braindino.augment.cpu.MultiCropAugment``: every random parameter is drawn from the
same distribution, crops are bilinear resamplings of the same boxes (``affine_grid`` + ``grid_sample``,
borders clamped), and the intensity operations are the same formulas. Parameters are sampled on the
input's device, so a CUDA batch never synchronises with the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from braindino.augment.config import BIAS_FIELD_TERMS, BLUR_TRUNCATE, MultiCropConfig


class BatchedMultiCrop:
    """``augment(slices [B, 1, H, W]) -> (global [n_global*B, 1, G, G], local [n_local*B, 1, L, L])``.

    Rows are view-major: row ``v * B + b`` is view ``v`` of slice ``b``. Slices are z-scored over the
    brain with background exactly 0. ``generator`` (a ``torch.Generator`` on the slices' device) makes
    the output reproducible.
    """

    def __init__(self, config: MultiCropConfig | None = None):
        self.config = config or MultiCropConfig()

    def __call__(self, slices: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        if slices.ndim != 4 or slices.shape[1] != 1:
            raise ValueError(f"BatchedMultiCrop expects slices [B, 1, H, W], got shape {tuple(slices.shape)}")
        slices = slices.float()
        counts = foreground_integral(slices[:, 0])
        global_views, local_views = (
            self._views(slices, counts, count, size, scale, generator) for count, size, scale in self.config.views()
        )
        return global_views, local_views

    def _views(self, slices: Tensor, counts: Tensor, count: int, size: int, scale: tuple[float, float],
               generator: torch.Generator | None) -> Tensor:
        cfg = self.config
        batch, _, height, width = slices.shape
        rows = count * batch
        if rows == 0:
            return slices.new_zeros((0, 1, size, size))

        def uniform(bounds: tuple[float, float], *shape: int) -> Tensor:
            return bounds[0] + (bounds[1] - bounds[0]) * torch.rand(shape or (rows,), generator=generator,
                                                                   device=slices.device)

        source = torch.arange(rows, device=slices.device) % batch
        y0, x0, h, w = sample_crop_boxes(counts, source, scale, cfg.aspect_ratio, cfg.min_brain_fraction,
                                         cfg.max_crop_tries, uniform)
        mirror = 1 - 2 * (uniform((0, 1)) < cfg.flip_p).float()
        zero = torch.zeros_like(w)
        theta = torch.stack([torch.stack([mirror * w / width, zero, (2 * x0 + w) / width - 1], dim=1),
                             torch.stack([zero, h / height, (2 * y0 + h) / height - 1], dim=1)], dim=1)
        grid = F.affine_grid(theta, [rows, 1, size, size], align_corners=False)
        crops = F.grid_sample(slices[source], grid, mode="bilinear", padding_mode="border", align_corners=False)
        foreground = crops != 0

        def per_row(values: Tensor) -> Tensor:
            return values.view(rows, 1, 1, 1)

        jitter = per_row(uniform((0, 1)) < cfg.intensity_p)
        contrast, brightness, gamma = (per_row(uniform(r)) for r in (cfg.contrast, cfg.brightness, cfg.gamma))
        crops = torch.where(jitter, jitter_intensity(crops, contrast, brightness, gamma), crops)
        biased = uniform((0, 1)) < cfg.bias_field_p
        strength = cfg.bias_field_strength
        coefficients = uniform((-strength, strength), rows, len(BIAS_FIELD_TERMS)) * biased[:, None]
        crops = crops * torch.exp(torch.einsum("nk,kij->nij", coefficients, bias_basis(size, crops.device)))[:, None]
        crops = crops * foreground
        blurred = uniform((0, 1)) < cfg.blur_p
        crops = gaussian_blur(crops, uniform(cfg.blur_sigma), blurred, cfg.blur_sigma[1])
        noisy = per_row(uniform((0, 1)) < cfg.noise_p)
        noise_sigma = per_row(uniform(cfg.noise_sigma))
        return torch.where(noisy, add_noise(crops, noise_sigma, cfg.noise_kind, generator), crops)


def foreground_integral(images: Tensor) -> Tensor:
    """Summed-area tables ``[B, H + 1, W + 1]`` (int32) of ``images != 0`` for ``images [B, H, W]``."""
    counts = (images != 0).int().cumsum(1).cumsum(2)
    return F.pad(counts, (1, 0, 1, 0))


def sample_crop_boxes(counts: Tensor, source: Tensor, scale: tuple[float, float], aspect_ratio: tuple[float, float],
                      min_fraction: float, tries: int,
                      uniform: Callable[..., Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Boxes ``(y0, x0, h, w)`` in pixels, one per row of ``source`` (its slice index): the first of ``tries``
    random boxes whose foreground fraction reaches ``min_fraction``, else the one with the most.
    ``uniform((low, high), *shape)`` draws the random numbers on the device."""
    height, width = counts.shape[1] - 1, counts.shape[2] - 1
    rows = source.numel()
    area = uniform(scale, rows, tries) * (height * width)
    ratio = torch.exp(uniform((math.log(aspect_ratio[0]), math.log(aspect_ratio[1])), rows, tries))
    h = torch.sqrt(area / ratio).clamp(max=height)
    w = torch.sqrt(area * ratio).clamp(max=width)
    y0 = uniform((0, 1), rows, tries) * (height - h)
    x0 = uniform((0, 1), rows, tries) * (width - w)
    top, left = torch.round(y0).long(), torch.round(x0).long()
    bottom = torch.maximum(torch.round(y0 + h).long(), top + 1).clamp(max=height)
    right = torch.maximum(torch.round(x0 + w).long(), left + 1).clamp(max=width)
    image = source[:, None]
    inside = (counts[image, bottom, right] - counts[image, top, right] - counts[image, bottom, left]
              + counts[image, top, left])
    fraction = inside / ((bottom - top) * (right - left))
    passes = fraction >= min_fraction
    pick = torch.where(passes.any(dim=1), passes.int().argmax(dim=1), fraction.argmax(dim=1))[:, None]
    return tuple(values.gather(1, pick)[:, 0] for values in (y0, x0, h, w))


def jitter_intensity(crops: Tensor, contrast: Tensor, brightness: Tensor, gamma: Tensor) -> Tensor:
    """``contrast * gamma_curve(crop) + brightness``, the gamma curve over each crop's min-max range."""
    low = crops.amin(dim=(2, 3), keepdim=True)
    span = (crops.amax(dim=(2, 3), keepdim=True) - low).clamp(min=1e-6)
    unit = ((crops - low) / span).clamp(min=1e-12)
    return contrast * (low + span * torch.exp(gamma * torch.log(unit))) + brightness


def bias_basis(size: int, device: torch.device) -> Tensor:
    """The bias field's polynomial terms ``[terms, size, size]`` over pixel centres in [-1, 1]."""
    u = (2 * torch.arange(size, device=device, dtype=torch.float32) + 1) / size - 1
    return torch.stack([torch.outer(u**i, u**j) for i, j in BIAS_FIELD_TERMS])


def gaussian_blur(crops: Tensor, sigma: Tensor, apply: Tensor, max_sigma: float) -> Tensor:
    """Separable Gaussian blur with a per-row ``sigma`` where ``apply`` (else identity), edges replicated;
    kernels stop at ``BLUR_TRUNCATE`` sigmas as in ``scipy.ndimage.gaussian_filter``."""
    rows = crops.shape[0]
    reach = int(BLUR_TRUNCATE * max_sigma + 0.5)
    offsets = torch.arange(-reach, reach + 1, device=crops.device, dtype=torch.float32)
    radius = torch.where(apply, torch.floor(BLUR_TRUNCATE * sigma + 0.5), torch.zeros_like(sigma))
    kernel = torch.exp(-0.5 * (offsets / sigma[:, None]) ** 2) * (offsets.abs() <= radius[:, None])
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    padded = F.pad(crops.view(1, rows, *crops.shape[2:]), (reach, reach, reach, reach), mode="replicate")
    blurred = F.conv2d(padded, kernel.view(rows, 1, -1, 1), groups=rows)
    blurred = F.conv2d(blurred, kernel.view(rows, 1, 1, -1), groups=rows)
    return blurred.view_as(crops)


def add_noise(crops: Tensor, sigma: Tensor, kind: str, generator: torch.Generator | None) -> Tensor:
    """Gaussian noise, or Rician noise on the crop shifted so its minimum is 0 (see the CPU form)."""
    def normal() -> Tensor:
        return torch.randn(crops.shape, generator=generator, device=crops.device)

    if kind == "gaussian":
        return crops + sigma * normal()
    floor = crops.amin(dim=(2, 3), keepdim=True)
    return torch.sqrt((crops - floor + sigma * normal()) ** 2 + (sigma * normal()) ** 2) + floor
