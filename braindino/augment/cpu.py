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

# Crops up to this size are blurred by matrix products, larger ones by SciPy's separable filter.
OPERATOR_BLUR_MAX_SIZE = 128


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
        crops = resize_crops(image, boxes, flips, size)
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
        changed = jitter | biased
        crops[changed] *= foreground[changed]  # background back to exactly 0
        if blurred.any():
            crops[blurred] = gaussian_blur(crops[blurred], blur_sigma[blurred], cfg.blur_sigma[1])
        if noisy.any():
            crops[noisy] = add_noise(rng, crops[noisy], noise_sigma[noisy], cfg.noise_kind)
        return crops


def foreground_integral(image: np.ndarray) -> np.ndarray:
    """Summed-area table of ``image != 0``, shape ``[H + 1, W + 1]``, so any box count costs O(1)."""
    counts = np.zeros((image.shape[0] + 1, image.shape[1] + 1), dtype=np.int32)
    np.cumsum(image != 0, axis=0, dtype=np.int32, out=counts[1:, 1:])
    np.cumsum(counts[1:, 1:], axis=1, out=counts[1:, 1:])
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


def resize_crops(image: np.ndarray, boxes: np.ndarray, flips: np.ndarray, size: int) -> np.ndarray:
    """Bilinear ``size x size`` resamplings ``[N, size, size]`` of ``boxes [N, 4] = (y0, x0, h, w)``, mirrored
    left-right where ``flips``. Output pixel ``i`` samples ``start + (i + 0.5) * length / size - 0.5``."""
    steps = (np.arange(size) + 0.5) / size
    rows = boxes[:, :1] + steps * boxes[:, 2:3] - 0.5
    cols = boxes[:, 1:2] + steps * boxes[:, 3:4] - 0.5
    cols[flips] = cols[flips, ::-1]
    row_low, row_high, row_weight = _neighbours(rows, image.shape[0])
    col_low, col_high, col_weight = _neighbours(cols, image.shape[1])
    crops = np.empty((len(boxes), size, size), dtype=np.float32)
    for i, crop in enumerate(crops):
        # Columns first, on the box's rows only, then whole-row gathers: cheaper than the other order
        # because crops upsample (box rows < size) and row gathers copy contiguous memory.
        first = row_low[i].min()
        rows_of_box = image[first:row_high[i].max() + 1]
        left = rows_of_box[:, col_low[i]]
        right = rows_of_box[:, col_high[i]]
        right -= left
        right *= col_weight[i]
        left += right
        top, bottom = left[row_low[i] - first], left[row_high[i] - first]
        bottom -= top
        bottom *= row_weight[i][:, None]
        np.add(top, bottom, out=crop)
    return crops


def _neighbours(coords: np.ndarray, extent: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper neighbour indices and the upper weight of ``coords``, clamped to ``[0, extent-1]``."""
    coords = np.clip(coords, 0, extent - 1)
    low = np.floor(coords).astype(np.intp)
    return low, np.minimum(low + 1, extent - 1), (coords - low).astype(np.float32)


def jitter_intensity(crops: np.ndarray, contrast: np.ndarray, brightness: np.ndarray,
                     gamma: np.ndarray) -> np.ndarray:
    """``contrast * gamma_curve(crop) + brightness`` per crop of a ``[N, S, S]`` stack, the gamma curve
    taken over each crop's own min-max range (background is reset to 0 by the caller)."""
    low = crops.min(axis=(1, 2), keepdims=True)
    span = np.maximum(crops.max(axis=(1, 2), keepdims=True) - low, np.float32(1e-6))
    curve = crops - low
    curve *= 1 / span
    np.maximum(curve, np.float32(1e-12), out=curve)
    np.log(curve, out=curve)
    curve *= gamma[:, None, None]
    np.exp(curve, out=curve)
    curve *= contrast[:, None, None] * span
    curve += contrast[:, None, None] * low + brightness[:, None, None]
    return curve


def gaussian_blur(crops: np.ndarray, sigma: np.ndarray, max_sigma: float) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter`` (edges replicated) of each crop with its own sigma. Small crops go
    through one batched product with blur operators, which beats per-crop filtering; large ones through
    SciPy's separable filter, which beats the O(size^3) products."""
    size = crops.shape[-1]
    if size <= OPERATOR_BLUR_MAX_SIZE:
        operators = blur_matrices(sigma, size, max_sigma)
        return operators @ crops @ operators.transpose(0, 2, 1)
    return np.stack([gaussian_filter(crop, s, mode="nearest", truncate=BLUR_TRUNCATE) for crop, s in zip(crops, sigma)])


def blur_matrices(sigma: np.ndarray, size: int, max_sigma: float) -> np.ndarray:
    """``[N, size, size]`` Gaussian blur operators (``blur @ crop @ blur.T``), one per sigma <= ``max_sigma``,
    edges replicated, kernels cut at ``BLUR_TRUNCATE`` sigmas as in ``scipy.ndimage.gaussian_filter``."""
    reach = int(BLUR_TRUNCATE * max_sigma + 0.5)
    offsets = np.arange(-reach, reach + 1)
    radius = np.floor(BLUR_TRUNCATE * sigma + 0.5)
    kernel = np.exp(-0.5 * (offsets / sigma[:, None]) ** 2) * (np.abs(offsets) <= radius[:, None])
    kernel /= kernel.sum(axis=1, keepdims=True)
    # Taps beyond an edge land on the edge pixel: the edge columns hold the kernel's cumulative sums.
    taps = 2 * reach + 1
    below = np.concatenate([np.zeros((len(sigma), 1)), np.cumsum(kernel, axis=1)], axis=1).astype(np.float32)
    kernel = np.concatenate([kernel, np.zeros((len(sigma), 1))], axis=1).astype(np.float32)
    matrices = kernel[:, _kernel_index(size, reach)]
    pixels = np.arange(size)
    matrices[:, :, 0] = below[:, np.clip(reach + 1 - pixels, 0, taps)]
    matrices[:, :, -1] = 1 - below[:, np.clip(size - 1 - pixels + reach, 0, taps)]
    return matrices


@functools.lru_cache(maxsize=8)
def _kernel_index(size: int, reach: int) -> np.ndarray:
    """Tap index ``j - i + reach`` of source pixel j for output pixel i, ``2 * reach + 1`` (a zero) if out of reach."""
    pixels = np.arange(size)
    offset = pixels[None, :] - pixels[:, None]
    index = np.where(np.abs(offset) <= reach, offset + reach, 2 * reach + 1)
    index.flags.writeable = False
    return index


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
    radius, angle = complex_normal_polar(rng, crops.shape)
    radius *= sigma[:, None, None]
    np.cos(angle, out=angle)
    if kind == "gaussian":
        angle *= radius
        return crops + angle
    floor = crops.min(axis=(1, 2), keepdims=True)
    shifted = crops - floor
    # |shifted + radius * e^(i angle)|^2 = shifted^2 + radius * (radius + 2 * shifted * cos(angle))
    angle *= shifted
    angle *= 2
    angle += radius
    angle *= radius
    shifted *= shifted
    shifted += angle
    np.sqrt(shifted, out=shifted)
    shifted += floor
    return shifted


def complex_normal_polar(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Radius and angle of standard complex Gaussian draws (real and imaginary parts each N(0, 1)) by the
    Box-Muller transform of raw 32-bit draws: about twice as fast as two ``standard_normal`` calls."""
    bits = rng.bit_generator.random_raw(int(np.prod(shape))).view(np.uint32).reshape(2, *shape) >> 8
    unit = (bits[0] + 1).astype(np.float32) * np.float32(2.0**-24)
    angle = bits[1].astype(np.float32) * np.float32(2 * np.pi * 2.0**-24)
    return np.sqrt(np.float32(-2) * np.log(unit)), angle
