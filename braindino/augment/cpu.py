"""Per-sample multi-crop augmentation in NumPy, for data-loader workers.

Every crop of one size is processed as one stacked array, so the cost per sample is a handful of
vectorised NumPy calls rather than a Python pipeline per crop. Interpolation is bilinear without
antialiasing (the same sampling as ``grid_sample`` in the batched form), borders are clamped.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.ndimage import gaussian_filter

from braindino.augment.config import BIAS_FIELD_TERMS, BLUR_TRUNCATE, MultiCropConfig


class MultiCropAugment:
    """``augment(slice) -> {"global": [n_global arrays G x G], "local": [n_local arrays L x L]}``.

    ``slice`` is a float ``[H, W]`` array z-scored over the brain with background exactly 0. The output
    is a deterministic function of ``seed`` (an int or a NumPy ``Generator``) and the call sequence;
    give each data-loader worker its own seed.
    """

    def __init__(self, config: MultiCropConfig | None = None, seed: int | np.random.Generator | None = None):
        self.config = config or MultiCropConfig()
        self.rng = np.random.default_rng(seed)

    def __call__(self, slice: np.ndarray) -> dict[str, list[np.ndarray]]:
        image = np.ascontiguousarray(slice, dtype=np.float32)
        if image.ndim != 2:
            raise ValueError(f"MultiCropAugment expects one [H, W] slice, got shape {image.shape}")
        counts = foreground_integral(image)
        views = {}
        for name, (count, size, scale) in zip(("global", "local"), self.config.views()):
            views[name] = list(self._views(image, counts, count, size, scale)) if count else []
        return views

    def _views(self, image: np.ndarray, counts: np.ndarray, count: int, size: int,
               scale: tuple[float, float]) -> np.ndarray:
        cfg, rng = self.config, self.rng
        boxes = sample_crop_boxes(rng, counts, count, scale, cfg.aspect_ratio, cfg.min_brain_fraction,
                                  cfg.max_crop_tries)
        flips = rng.random(count) < cfg.flip_p
        crops = np.stack([resize_crop(image, box, flip, size) for box, flip in zip(boxes, flips)])
        foreground = crops != 0
        jitter = rng.random(count) < cfg.intensity_p
        contrast = rng.uniform(*cfg.contrast, count).astype(np.float32)
        brightness = rng.uniform(*cfg.brightness, count).astype(np.float32)
        gamma = rng.uniform(*cfg.gamma, count).astype(np.float32)
        biased = rng.random(count) < cfg.bias_field_p
        bias = rng.uniform(-cfg.bias_field_strength, cfg.bias_field_strength, (count, len(BIAS_FIELD_TERMS)))
        blurred = rng.random(count) < cfg.blur_p
        blur_sigma = rng.uniform(*cfg.blur_sigma, count)
        noisy = rng.random(count) < cfg.noise_p
        noise_sigma = rng.uniform(*cfg.noise_sigma, count).astype(np.float32)
        if jitter.any():
            crops[jitter] = jitter_intensity(crops[jitter], contrast[jitter], brightness[jitter], gamma[jitter])
        if biased.any():
            crops[biased] *= np.exp(np.tensordot(bias[biased].astype(np.float32), bias_basis(size), axes=1))
        crops *= foreground
        for i in np.flatnonzero(blurred):
            crops[i] = gaussian_filter(crops[i], blur_sigma[i], mode="nearest", truncate=BLUR_TRUNCATE)
        if noisy.any():
            crops[noisy] = add_noise(rng, crops[noisy], noise_sigma[noisy], cfg.noise_kind)
        return crops


def foreground_integral(image: np.ndarray) -> np.ndarray:
    """Summed-area table of ``image != 0``, shape ``[H + 1, W + 1]``, so any box count costs O(1)."""
    counts = np.zeros((image.shape[0] + 1, image.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(image != 0, axis=0), axis=1, out=counts[1:, 1:])
    return counts


def sample_crop_boxes(rng: np.random.Generator, counts: np.ndarray, count: int, scale: tuple[float, float],
                      aspect_ratio: tuple[float, float], min_fraction: float, tries: int) -> np.ndarray:
    """``count`` boxes ``(y0, x0, h, w)`` in pixels: per box, the first of ``tries`` random boxes whose
    foreground fraction reaches ``min_fraction``, else the one with the most foreground."""
    height, width = counts.shape[0] - 1, counts.shape[1] - 1
    area = rng.uniform(*scale, (count, tries)) * (height * width)
    ratio = np.exp(rng.uniform(np.log(aspect_ratio[0]), np.log(aspect_ratio[1]), (count, tries)))
    h = np.minimum(np.sqrt(area / ratio), height)
    w = np.minimum(np.sqrt(area * ratio), width)
    y0 = rng.random((count, tries)) * (height - h)
    x0 = rng.random((count, tries)) * (width - w)
    fraction = box_foreground_fraction(counts, y0, x0, h, w)
    passes = fraction >= min_fraction
    pick = np.where(passes.any(axis=1), passes.argmax(axis=1), fraction.argmax(axis=1))
    rows = np.arange(count)
    return np.stack([y0[rows, pick], x0[rows, pick], h[rows, pick], w[rows, pick]], axis=1)


def box_foreground_fraction(counts: np.ndarray, y0: np.ndarray, x0: np.ndarray, h: np.ndarray,
                            w: np.ndarray) -> np.ndarray:
    """Foreground fraction of each box, its edges rounded to whole pixels."""
    height, width = counts.shape[0] - 1, counts.shape[1] - 1
    top = np.rint(y0).astype(np.intp)
    left = np.rint(x0).astype(np.intp)
    bottom = np.clip(np.rint(y0 + h).astype(np.intp), top + 1, height)
    right = np.clip(np.rint(x0 + w).astype(np.intp), left + 1, width)
    inside = counts[bottom, right] - counts[top, right] - counts[bottom, left] + counts[top, left]
    return inside / ((bottom - top) * (right - left))


def resize_crop(image: np.ndarray, box: np.ndarray, flip: bool, size: int) -> np.ndarray:
    """Bilinear ``size x size`` resampling of ``box = (y0, x0, h, w)``, mirrored left-right if ``flip``."""
    y0, x0, h, w = box
    rows, row_weight = _sample_points(y0, h, size, image.shape[0])
    cols, col_weight = _sample_points(x0, w, size, image.shape[1])
    if flip:
        cols, col_weight = cols[:, ::-1], col_weight[::-1]
    first, last = cols[0].min(), cols[1].max() + 1
    band = image[rows[0], first:last] * (1 - row_weight)[:, None] + image[rows[1], first:last] * row_weight[:, None]
    return band[:, cols[0] - first] * (1 - col_weight) + band[:, cols[1] - first] * col_weight


def _sample_points(start: float, length: float, size: int, extent: int) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour indices ``[2, size]`` and weights of ``size`` pixel centres spanning ``[start, start+length)``."""
    centres = start + (np.arange(size) + 0.5) * (length / size) - 0.5
    centres = np.clip(centres, 0, extent - 1)
    below = np.floor(centres).astype(np.intp)
    weight = (centres - below).astype(np.float32)
    return np.stack([below, np.minimum(below + 1, extent - 1)]), weight


def jitter_intensity(crops: np.ndarray, contrast: np.ndarray, brightness: np.ndarray,
                     gamma: np.ndarray) -> np.ndarray:
    """``contrast * gamma_curve(crop) + brightness`` per crop of a ``[N, S, S]`` stack, the gamma curve
    taken over each crop's own min-max range (background is reset to 0 by the caller)."""
    low = crops.min(axis=(1, 2), keepdims=True)
    span = np.maximum(crops.max(axis=(1, 2), keepdims=True) - low, np.float32(1e-6))
    unit = np.maximum((crops - low) / span, np.float32(1e-12))
    curved = low + span * np.exp(gamma[:, None, None] * np.log(unit))
    return contrast[:, None, None] * curved + brightness[:, None, None]


@functools.lru_cache(maxsize=8)
def bias_basis(size: int) -> np.ndarray:
    """The bias field's polynomial terms on a ``size x size`` grid of pixel centres in [-1, 1]."""
    u = (2 * np.arange(size, dtype=np.float32) + 1) / size - 1
    basis = np.stack([np.outer(u**i, u**j) for i, j in BIAS_FIELD_TERMS])
    basis.flags.writeable = False
    return basis


def add_noise(rng: np.random.Generator, crops: np.ndarray, sigma: np.ndarray, kind: str) -> np.ndarray:
    """Gaussian noise, or Rician: the magnitude of complex Gaussian noise added to each crop shifted so its
    minimum is 0 (Rician noise lives on non-negative magnitudes; z-scored slices go negative)."""
    sigma = sigma[:, None, None]
    if kind == "gaussian":
        return crops + sigma * rng.standard_normal(crops.shape, dtype=np.float32)
    floor = crops.min(axis=(1, 2), keepdims=True)
    real = crops - floor + sigma * rng.standard_normal(crops.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(crops.shape, dtype=np.float32)
    return np.sqrt(real * real + imaginary * imaginary) + floor
