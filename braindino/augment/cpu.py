"""Per-sample multi-crop augmentation in NumPy, for data-loader workers.

Every crop of one size shares one stacked array, and each operation is a handful of in-place,
float32 passes over it (torch's single-threaded kernels for ``log``/``exp``, which beat NumPy's),
so the cost per sample is close to one memory pass per operation rather than a Python pipeline per
crop. Interpolation is bilinear without antialiasing (the same sampling as ``grid_sample`` in the
batched form), borders are clamped. Noise is read from a pool of normal draws (``noise.NormalPool``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch

from braindino.augment.config import BIAS_FIELD_TERMS, BLUR_TRUNCATE, MultiCropConfig
from braindino.augment.noise import NormalPool

# Crops up to this size are blurred by matrix products, larger ones by shifted adds.
OPERATOR_BLUR_MAX_SIZE = 128

# Columns of the per-crop uniform draws in ``MultiCropAugment._views``.
FLIP, JITTER, CONTRAST, BRIGHTNESS, GAMMA, BIAS, BLUR, BLUR_SIGMA, NOISE, NOISE_SIGMA = range(10)


class MultiCropAugment:
    """``augment(slice) -> {"global": [n_global arrays G x G], "local": [n_local arrays L x L]}``.

    ``slice`` is a float ``[H, W]`` array z-scored over the brain with background exactly 0. The output
    is a deterministic function of ``seed`` (an int or a NumPy ``Generator``) and the call sequence;
    give each data-loader worker its own seed.
    """

    def __init__(self, config: MultiCropConfig | None = None, seed: int | np.random.Generator | None = None):
        self.config = config or MultiCropConfig()
        self.rng = np.random.default_rng(seed)
        self.noise: NormalPool | None = None  # drawn from self.rng when a crop first needs noise

    def __call__(self, slice: np.ndarray) -> dict[str, list[np.ndarray]]:
        image = np.ascontiguousarray(slice, dtype=np.float32)
        if image.ndim != 2:
            raise ValueError(f"MultiCropAugment expects one [H, W] slice, got shape {image.shape}")
        counts = foreground_integral(image)
        columns = np.ascontiguousarray(image.T)
        views = {}
        for name, (count, size, scale) in zip(("global", "local"), self.config.views()):
            views[name] = list(self._views(columns, counts, count, size, scale)) if count else []
        return views

    def _views(self, columns: np.ndarray, counts: np.ndarray, count: int, size: int,
               scale: tuple[float, float]) -> np.ndarray:
        cfg, rng = self.config, self.rng
        boxes = sample_crop_boxes(rng, counts, count, scale, cfg.aspect_ratio, cfg.min_brain_fraction,
                                  cfg.max_crop_tries)
        draws = rng.random((count, 10))
        bias = rng.uniform(-cfg.bias_field_strength, cfg.bias_field_strength, (count, len(BIAS_FIELD_TERMS)))

        def uniform(column: int, bounds: tuple[float, float], rows: np.ndarray) -> np.ndarray:
            return (bounds[0] + (bounds[1] - bounds[0]) * draws[rows, column]).astype(np.float32)

        crops = resize_crops(columns, boxes, draws[:, FLIP] < cfg.flip_p, size)
        foreground = crops != 0
        jitter = np.flatnonzero(draws[:, JITTER] < cfg.intensity_p)
        if jitter.size:
            in_place(crops, jitter, lambda part: jitter_intensity(
                part, uniform(CONTRAST, cfg.contrast, jitter), uniform(BRIGHTNESS, cfg.brightness, jitter),
                uniform(GAMMA, cfg.gamma, jitter)))
        biased = np.flatnonzero(draws[:, BIAS] < cfg.bias_field_p)
        if biased.size:
            for row, field in zip(biased, bias_field(bias[biased], size)):
                crops[row] *= field
        if jitter.size or biased.size:
            crops *= foreground  # background back to exactly 0 (a no-op on untouched crops)
        blurred = np.flatnonzero(draws[:, BLUR] < cfg.blur_p)
        if blurred.size:
            crops[blurred] = gaussian_blur(crops[blurred], uniform(BLUR_SIGMA, cfg.blur_sigma, blurred))
        noisy = np.flatnonzero(draws[:, NOISE] < cfg.noise_p)
        if noisy.size:
            self.noise = self.noise or NormalPool(rng)
            normals = self.noise.windows(rng, noisy.size, (1 if cfg.noise_kind == "gaussian" else 2, size, size))
            crops[noisy] = add_noise(crops[noisy], uniform(NOISE_SIGMA, cfg.noise_sigma, noisy), cfg.noise_kind,
                                     normals)
        return crops


def in_place(stack: np.ndarray, rows: np.ndarray, operation: Callable[[np.ndarray], object]) -> None:
    """Run ``operation``, which works in place on a stack, on the ``rows`` (indices) of ``stack``."""
    if rows.size == len(stack):
        operation(stack)
    else:
        part = stack[rows]
        operation(part)
        stack[rows] = part


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


def resize_crops(columns: np.ndarray, boxes: np.ndarray, flips: np.ndarray, size: int) -> np.ndarray:
    """Bilinear ``size x size`` resamplings ``[N, size, size]`` of ``boxes [N, 4] = (y0, x0, h, w)`` of the image
    whose transpose is ``columns [W, H]``, mirrored left-right where ``flips``. Output pixel ``i`` samples
    ``start + (i + 0.5) * length / size - 0.5``."""
    count = len(boxes)
    steps = (np.arange(size) + 0.5) / size
    rows = boxes[:, :1] + steps * boxes[:, 2:3] - 0.5
    cols = boxes[:, 1:2] + steps * boxes[:, 3:4] - 0.5
    cols[flips] = cols[flips, ::-1]
    row_low, row_high, row_weight = _neighbours(rows, columns.shape[1])
    col_low, col_high, col_weight = _neighbours(cols, columns.shape[0])
    # Whole-column copies interpolate between columns (on the rows any box needs), one transpose turns
    # them into rows, and whole-row copies interpolate between rows: no per-pixel gathers.
    first, last = row_low.min(), row_high.max() + 1
    columns = np.ascontiguousarray(columns[:, first:last])
    left = columns.take(col_low.ravel(), axis=0)
    right = columns.take(col_high.ravel(), axis=0)
    right -= left
    right *= col_weight.reshape(-1, 1)
    left += right
    height = last - first
    box_rows = np.ascontiguousarray(left.reshape(count, size, height).transpose(0, 2, 1)).reshape(-1, size)
    offsets = (np.arange(count) * height - first)[:, None]
    top = box_rows.take((row_low + offsets).ravel(), axis=0)
    bottom = box_rows.take((row_high + offsets).ravel(), axis=0)
    bottom -= top
    bottom *= row_weight.reshape(-1, 1)
    top += bottom
    return top.reshape(count, size, size)


def _neighbours(coords: np.ndarray, extent: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper neighbour indices and the upper weight of ``coords``, clamped to ``[0, extent-1]``."""
    coords = np.clip(coords, 0, extent - 1)
    low = np.floor(coords).astype(np.intp)
    return low, np.minimum(low + 1, extent - 1), (coords - low).astype(np.float32)


def jitter_intensity(crops: np.ndarray, contrast: np.ndarray, brightness: np.ndarray, gamma: np.ndarray) -> None:
    """In place on a ``[N, S, S]`` stack: ``contrast * gamma_curve(crop) + brightness`` per crop, the gamma curve
    taken over each crop's own min-max range (background is reset to 0 by the caller). ``span * unit**gamma``
    is computed as ``span**(1 - gamma) * exp(gamma * log(crop - low))``: one log and one exp per pixel (the
    minimum pixel's ``log(0) = -inf`` maps to 0, as ``unit**gamma`` does for ``gamma > 0``)."""
    low = crops.min(axis=(1, 2), keepdims=True)
    span = np.maximum(crops.max(axis=(1, 2), keepdims=True) - low, np.float32(1e-6))
    contrast, brightness, gamma = (v[:, None, None] for v in (contrast, brightness, gamma))
    crops -= low
    values = torch.from_numpy(crops)
    values.log_()
    crops *= gamma
    values.exp_()
    crops *= contrast * span ** (1 - gamma)
    crops += contrast * low + brightness


def bias_field(coefficients: np.ndarray, size: int) -> np.ndarray:
    """``[N, size, size]``: ``exp`` of the log-polynomials with ``coefficients [N, terms]`` (one per
    ``BIAS_FIELD_TERMS`` ``u**i * v**j``) on a ``size x size`` grid of pixel centres in [-1, 1], u down the
    rows. The terms in u alone and in v alone add up to vectors; only mixed terms need the grid."""
    u = (2 * np.arange(size, dtype=np.float32) + 1) / size - 1
    coefficients = coefficients.astype(np.float32)
    rows, cols = np.zeros((2, len(coefficients), size), dtype=np.float32)
    mixed = []
    for (i, j), c in zip(BIAS_FIELD_TERMS, coefficients.T[:, :, None]):
        if j == 0:
            rows += c * u**i
        elif i == 0:
            cols += c * u**j
        else:
            mixed.append((c * u**i, u**j))
    field = rows[:, :, None] + cols[:, None, :]
    for along_rows, along_cols in mixed:
        field += along_rows[:, :, None] * along_cols
    return torch.from_numpy(field).exp_().numpy()


def gaussian_blur(crops: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter`` (edges replicated, kernels cut at ``BLUR_TRUNCATE`` sigmas) of each
    crop of a ``[N, S, S]`` stack with its own sigma. Small crops go through one batched product with blur
    operators (``operator @ crop @ operator.T``); large ones, where the products' O(S^3) would dominate,
    through two separable passes of shifted adds over the stack."""
    radius = np.floor(BLUR_TRUNCATE * sigma + 0.5)
    reach = int(radius.max())
    offsets = np.arange(-reach, reach + 1)
    kernel = np.exp(-0.5 * (offsets / sigma[:, None]) ** 2) * (np.abs(offsets) <= radius[:, None])
    kernel = (kernel / kernel.sum(axis=1, keepdims=True)).astype(np.float32)
    size = crops.shape[-1]
    if size <= OPERATOR_BLUR_MAX_SIZE:
        operators = blur_operators(kernel, size)
        return operators @ crops @ operators.transpose(0, 2, 1)
    if reach == 0:
        return crops.copy()
    weights = kernel[:, reach:, None, None]  # the centre tap, then one side (kernels are symmetric)
    count = crops.shape[0]
    tall = np.empty((count, size + 2 * reach, size), dtype=np.float32)
    tall[:, reach:-reach] = crops
    tall[:, :reach] = crops[:, :1]
    tall[:, -reach:] = crops[:, -1:]
    wide = np.empty((count, size, size + 2 * reach), dtype=np.float32)
    _correlate(tall, weights, reach, size, 1, wide[:, :, reach:-reach])
    wide[:, :, :reach] = wide[:, :, reach:reach + 1]
    wide[:, :, -reach:] = wide[:, :, -reach - 1:-reach]
    blurred = np.empty_like(crops)
    _correlate(wide, weights, reach, size, 2, blurred)
    return blurred


def blur_operators(kernel: np.ndarray, size: int) -> np.ndarray:
    """``[N, size, size]`` matrices that correlate ``size`` pixels with each ``kernel [N, 2 * reach + 1]``, edges
    replicated: row i holds ``kernel[j - i + reach]`` at column j, and the taps beyond an edge add up on the
    edge column."""
    count, taps = kernel.shape
    reach = taps // 2
    # The kernel at offsets -(size-1)..(size-1), zero beyond its reach: row i is the window from size-1-i.
    span = min(reach, size - 1)
    along = np.zeros((count, 2 * size - 1), dtype=np.float32)
    along[:, size - 1 - span:size + span] = kernel[:, reach - span:reach + span + 1]
    step = along.strides[1]
    operators = np.lib.stride_tricks.as_strided(along[:, size - 1:], (count, size, size), (along.strides[0], -step, step))
    operators = operators.copy()
    below = np.zeros((count, taps + 1), dtype=np.float32)
    np.cumsum(kernel, axis=1, out=below[:, 1:])
    first, last = _edge_taps(size, reach)
    operators[:, :, 0] = below[:, first]
    operators[:, :, -1] = 1 - below[:, last]
    return operators


@functools.lru_cache(maxsize=8)
def _edge_taps(size: int, reach: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output pixel, how many kernel taps land on or before the first pixel, and before the last one."""
    pixels = np.arange(size)
    first, last = np.clip(reach + 1 - pixels, 0, 2 * reach + 1), np.clip(size - 1 - pixels + reach, 0, 2 * reach + 1)
    first.flags.writeable = last.flags.writeable = False
    return first, last


def _correlate(padded: np.ndarray, weights: np.ndarray, reach: int, size: int, axis: int, out: np.ndarray) -> None:
    """``out = sum_t weights[:, |t|] * padded shifted by t along axis``, ``padded`` holding ``reach`` extra
    pixels at both ends of that axis; symmetric taps are added before they are weighted."""
    def shifted(offset: int) -> np.ndarray:
        index = [slice(None)] * 3
        index[axis] = slice(reach + offset, reach + offset + size)
        return padded[tuple(index)]

    np.multiply(shifted(0), weights[:, 0], out=out)
    pair = np.empty(out.shape, dtype=np.float32)
    for offset in range(1, reach + 1):
        np.add(shifted(-offset), shifted(offset), out=pair)
        pair *= weights[:, offset]
        out += pair


def add_noise(crops: np.ndarray, sigma: np.ndarray, kind: str, normals: np.ndarray) -> np.ndarray:
    """Gaussian noise, or Rician: the magnitude of complex Gaussian noise added to each crop shifted so its
    minimum is 0 (Rician noise lives on non-negative magnitudes; z-scored slices go negative).
    ``normals`` is ``[N, 1, S, S]`` standard normals for Gaussian noise, ``[N, 2, S, S]`` for Rician."""
    sigma = sigma[:, None, None]
    real = normals[:, 0]
    real *= sigma
    if kind == "gaussian":
        real += crops
        return real
    floor = crops.min(axis=(1, 2), keepdims=True)
    real += crops
    real -= floor
    real *= real
    imaginary = normals[:, 1]
    imaginary *= sigma
    imaginary *= imaginary
    real += imaginary
    np.sqrt(real, out=real)
    real += floor
    return real
