"""Per-sample multi-crop augmentation in NumPy, for data-loader workers.

All crops of one size live in one stacked array, in an order where the crops that an operation applies to
form one or two runs of rows, and every operation runs over those rows in a few in-place float32 passes,
so a sample costs one short chain of vectorised calls per crop size rather than a Python pipeline per
crop. Where torch's single-threaded CPU kernels beat NumPy's (``log``/``exp``, the fused bilinear
``lerp``) they run on the same memory through ``torch.from_numpy``.
Interpolation is bilinear without antialiasing (the same sampling as ``grid_sample`` in the batched
form), borders are clamped. Noise is read from a pool of standard normals (``noise.NormalPool``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from braindino.augment.config import BIAS_FIELD_TERMS, BLUR_TRUNCATE, MultiCropConfig
from braindino.augment.noise import NormalPool

# Crops up to this size are blurred by matrix products, larger ones by shifted adds (measured crossover).
OPERATOR_BLUR_MAX_SIZE = 64
# Larger crops are blurred in two calls, kernels up to this radius and wider ones, so that a narrow kernel
# does not pay for the widest taps of its stack (measured: 3 beats 2, 4 and one call per radius).
NARROW_BLUR_RADIUS = 3
# ``many`` works on groups of at most this many slices: larger stacks outgrow the caches (measured: a group
# of 32 in one piece ran at 0.77x the speed of groups of 8).
GROUP_SLICES = 8

# Columns of the per-crop parameters (``draw_slice_randoms``): uniform draws mapped to their ranges.
FLIP, JITTER, CONTRAST, BRIGHTNESS, GAMMA, BIAS, BLUR, BLUR_SIGMA, NOISE, NOISE_SIGMA, NOISE_WINDOW = range(11)
BIAS_COEFFICIENTS = slice(11, 11 + len(BIAS_FIELD_TERMS))


class MultiCropAugment:
    """``augment(slice) -> {"global": [n_global arrays G x G], "local": [n_local arrays L x L]}``.

    ``slice`` is a float ``[H, W]`` array z-scored over the brain with background exactly 0. The output
    is a deterministic function of ``seed`` (an int or a NumPy ``Generator``) and the call sequence;
    give each data-loader worker its own seed.
    """

    def __init__(self, config: MultiCropConfig | None = None, seed: int | np.random.Generator | None = None):
        self.config = config or MultiCropConfig()
        self.rng = np.random.default_rng(seed)
        self.noise: NormalPool | None = None  # drawn when a crop first needs noise, from a generator spawned
        # from the seed (not from self.rng's stream, so the pool never shifts the other draws)

    def __call__(self, slice: np.ndarray) -> dict[str, list[np.ndarray]]:
        return self.many([slice])[0]

    def many(self, slices: Sequence[np.ndarray]) -> list[dict[str, list[np.ndarray]]]:
        """The views of each of ``slices`` (one ``[H, W]`` shape), as ``[self(s) for s in slices]`` would give
        them: every crop keeps its own random parameters. Each operation runs once over the crops of a group of
        up to ``GROUP_SLICES`` slices, so a data pipeline that hands over a batch pays the per-call costs
        once per group rather than once per slice."""
        shapes = {np.shape(s) for s in slices}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"MultiCropAugment expects [H, W] slices of one shape, got shapes {sorted(shapes)}")
        if len(slices) > GROUP_SLICES:  # same random stream, same views: groups only bound the working set
            return [views for start in range(0, len(slices), GROUP_SLICES)
                    for views in self.many(slices[start:start + GROUP_SLICES])]
        images = np.ascontiguousarray(np.stack(slices), dtype=np.float32)
        cfg = self.config
        (n_global, global_size, global_scale), (n_local, local_size, local_scale) = cfg.views()
        per_slice = n_global + n_local
        box_draws, parameters = draw_slice_randoms(self.rng, cfg, len(images), per_slice)
        scale = np.repeat([global_scale, local_scale], [n_global, n_local], axis=0)
        columns = np.ascontiguousarray(images.transpose(0, 2, 1))
        boxes = sample_crop_boxes(foreground_integral(columns), box_draws, scale, cfg.aspect_ratio,
                                  cfg.min_brain_fraction)
        views: list[dict[str, list[np.ndarray]]] = [{"global": [], "local": []} for _ in images]
        for name, first, stop, size in (("global", 0, n_global, global_size), ("local", n_global, per_slice, local_size)):
            if stop == first:
                continue
            crops = self._views(columns, boxes[:, first:stop].reshape(-1, 4),
                                parameters[:, first:stop].reshape(-1, parameters.shape[-1]), size)
            for index, sample in enumerate(views):
                sample[name] = crops[index * (stop - first):(index + 1) * (stop - first)]
        return views

    def _views(self, columns: np.ndarray, boxes: np.ndarray, parameters: np.ndarray, size: int) -> list[np.ndarray]:
        """Crops ``size x size`` of ``boxes [N, 4]``, the same number from each image of ``columns``, in their
        order: rows of one stack, which holds them in ``crop_order`` so that every operation runs over whole
        runs of rows."""
        cfg = self.config
        jitter, biased, blurred, noisy = (parameters[:, column] < p for column, p in (
            (JITTER, cfg.intensity_p), (BIAS, cfg.bias_field_p), (BLUR, cfg.blur_p), (NOISE, cfg.noise_p)))
        order = crop_order(jitter, blurred, noisy)
        sources = order // (len(boxes) // len(columns))
        boxes, parameters = boxes[order], parameters[order]
        window = parameters[:, NOISE_WINDOW]  # float64: a position among millions of pool offsets
        parameters = parameters.astype(np.float32)
        crops = resize_crops(columns, sources, boxes, parameters[:, FLIP] < cfg.flip_p, size)
        for rows in runs(jitter[order]):
            jitter_intensity(crops[rows], *parameters[rows, CONTRAST:GAMMA + 1].T)
        rows = biased[order].nonzero()[0]
        for row, field in zip(rows, bias_field(parameters[rows, BIAS_COEFFICIENTS], size)):
            crops[row] *= field  # background stays 0: only jittered crops need it reset
        for rows in runs(blurred[order]):
            gaussian_blur(crops[rows], parameters[rows, BLUR_SIGMA].astype(np.float64), out=crops[rows])
        for rows in runs(noisy[order]):
            self.noise = self.noise or NormalPool(np.random.default_rng(self.rng.bit_generator.seed_seq.spawn(1)[0]))
            parts = 1 if cfg.noise_kind == "gaussian" else 2
            normals = np.stack(self.noise.windows(window[rows], (parts, size, size)))
            add_noise(crops[rows], parameters[rows, NOISE_SIGMA], normals)
        return [crops[row] for row in np.argsort(order)]


def draw_slice_randoms(rng: np.random.Generator, config: MultiCropConfig, slices: int,
                       per_slice: int) -> tuple[np.ndarray, np.ndarray]:
    """Every random number of ``slices`` slices with ``per_slice`` crops each, slice after slice and within a
    slice its box draws then its crop parameters, in one draw: box draws ``[slices, 4, per_slice, tries]``
    for ``sample_crop_boxes`` and parameters ``[slices, per_slice, columns]``. Parameters map uniform draws
    to their ranges: the probability columns (``FLIP``, ``JITTER``, ``BIAS``, ``BLUR``, ``NOISE``) stay in
    [0, 1) to compare with their ``*_p``, ``NOISE_WINDOW`` too (where the crop's noise starts in the pool),
    the others span their configured ranges, the bias field coefficients +-``bias_field_strength``. float64,
    so that a window position keeps its resolution."""
    strength = config.bias_field_strength
    bounds = [(0, 1)] * BIAS_COEFFICIENTS.stop
    for column, values in ((CONTRAST, config.contrast), (BRIGHTNESS, config.brightness), (GAMMA, config.gamma),
                           (BLUR_SIGMA, config.blur_sigma), (NOISE_SIGMA, config.noise_sigma)):
        bounds[column] = values
    bounds[BIAS_COEFFICIENTS] = [(-strength, strength)] * len(BIAS_FIELD_TERMS)
    low, high = np.array(bounds, dtype=np.float64).T
    box_length = 4 * per_slice * config.max_crop_tries
    draws = rng.random((slices, box_length + per_slice * len(bounds)))
    box_draws = draws[:, :box_length].reshape(slices, 4, per_slice, config.max_crop_tries)
    return box_draws, low + (high - low) * draws[:, box_length:].reshape(slices, per_slice, len(bounds))


def crop_order(jitter: np.ndarray, blurred: np.ndarray, noisy: np.ndarray) -> np.ndarray:
    """A permutation of crops (flags ``[N]`` each) under which the jittered crops form one run, the blurred
    ones one run and the noisy ones at most two: jittered unblurred crops, then jittered blurred, blurred
    unjittered and the rest, the noisy crops last in the first and third group and first in the others."""
    group = np.where(jitter, blurred, 3 - blurred)
    return np.argsort(2 * group + (noisy ^ (group % 2 == 1)), kind="stable")


def runs(flags: np.ndarray) -> list[slice]:
    """The runs of consecutive true ``flags`` as slices."""
    padded = np.zeros(len(flags) + 2, dtype=bool)
    padded[1:-1] = flags
    edges = (padded[1:] != padded[:-1]).nonzero()[0].tolist()
    return [slice(start, stop) for start, stop in zip(edges[::2], edges[1::2])]


def foreground_integral(columns: np.ndarray) -> np.ndarray:
    """Summed-area tables ``[B, H + 1, W + 1]`` of ``images != 0``, from their transposes ``columns [B, W, H]``
    (NumPy's cumsum is several times faster along contiguous memory), so any box count costs O(1)."""
    count, width, height = columns.shape
    counts = np.zeros((count, height + 1, width + 1), dtype=np.int32)
    counts[:, 1:, 1:] = np.cumsum(columns != 0, axis=2, dtype=np.int32).transpose(0, 2, 1)
    np.cumsum(counts[:, 1:, 1:], axis=2, out=counts[:, 1:, 1:])
    return counts


def sample_crop_boxes(counts: np.ndarray, draws: np.ndarray, scale: tuple[float, float] | np.ndarray,
                      aspect_ratio: tuple[float, float], min_fraction: float) -> np.ndarray:
    """Boxes ``[B, count, 4] = (y0, x0, h, w)`` in pixels in the images of ``counts`` (``foreground_integral``),
    from uniform ``draws [B, 4, count, tries]``: per box, the first of the tries whose foreground fraction
    reaches ``min_fraction``, else the one with the most foreground. ``scale`` is the area fraction range,
    for all boxes or one ``[count, 2]`` row per box."""
    height, width = counts.shape[1] - 1, counts.shape[2] - 1
    low, high = np.asarray(scale, dtype=np.float64).T[..., None]
    log_ratio = np.log(aspect_ratio)
    area = (low + (high - low) * draws[:, 0]) * (height * width)
    ratio = np.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * draws[:, 1])
    h = np.minimum(np.sqrt(area / ratio), height)
    w = np.minimum(np.sqrt(area * ratio), width)
    y0 = draws[:, 2] * (height - h)
    x0 = draws[:, 3] * (width - w)
    fraction = box_foreground_fraction(counts, y0, x0, h, w)
    passes = fraction >= min_fraction
    pick = np.where(passes.any(axis=2), passes.argmax(axis=2), fraction.argmax(axis=2))
    return np.take_along_axis(np.stack([y0, x0, h, w], axis=-1), pick[..., None, None], axis=2)[:, :, 0]


def box_foreground_fraction(counts: np.ndarray, y0: np.ndarray, x0: np.ndarray, h: np.ndarray,
                            w: np.ndarray) -> np.ndarray:
    """Foreground fraction of each box ``[B, ...]`` in its image's table ``counts [B]``, its edges rounded to
    whole pixels."""
    height, width = counts.shape[1] - 1, counts.shape[2] - 1
    top = np.rint(y0).astype(np.intp)
    left = np.rint(x0).astype(np.intp)
    bottom = np.minimum(np.maximum(np.rint(y0 + h).astype(np.intp), top + 1), height)
    right = np.minimum(np.maximum(np.rint(x0 + w).astype(np.intp), left + 1), width)
    image = np.arange(len(counts)).reshape(-1, *[1] * (top.ndim - 1))
    inside = counts[image, bottom, right] - counts[image, top, right] - counts[image, bottom, left] + counts[image, top, left]
    return inside / ((bottom - top) * (right - left))


def resize_crops(columns: np.ndarray, sources: np.ndarray, boxes: np.ndarray, flips: np.ndarray, size: int) -> np.ndarray:
    """Bilinear ``size x size`` resamplings ``[N, size, size]`` of ``boxes [N, 4] = (y0, x0, h, w)`` in the images
    ``sources [N]`` of ``columns [B, W, H]`` (the images' transposes), mirrored left-right where ``flips``.
    Output pixel ``i`` samples ``start + (i + 0.5) * length / size - 0.5``, borders clamped."""
    count = len(boxes)
    width, height = columns.shape[1:]
    last = np.array([[height - 1], [width - 1]])  # the last row and the last column
    coords = (np.arange(size) + 0.5) / size * boxes[:, 2:, None] + (boxes[:, :2, None] - 0.5)  # [N, 2, size]
    coords[flips, 1] = coords[flips, 1, ::-1]
    coords = np.minimum(np.maximum(coords, 0), last)
    low = coords.astype(np.intp)  # coords >= 0: truncation is the floor
    high = np.minimum(low + 1, last)
    weight = (coords - low).astype(np.float32)[..., None]
    # Whole-column copies interpolate between columns, one transpose turns them into rows, and whole-row
    # copies interpolate between rows: no per-pixel gathers.
    all_columns = columns.reshape(-1, height)
    image_start = (sources * width)[:, None]
    left = _lerp(all_columns.take(low[:, 1] + image_start, axis=0), all_columns.take(high[:, 1] + image_start, axis=0),
                 weight[:, 1])
    box_rows = np.ascontiguousarray(left.transpose(0, 2, 1)).reshape(-1, size)
    offsets = (np.arange(count) * height)[:, None]
    return _lerp(box_rows.take(low[:, 0] + offsets, axis=0), box_rows.take(high[:, 0] + offsets, axis=0),
                 weight[:, 0])


def _lerp(start: np.ndarray, end: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``start + weight * (end - start)`` into ``start``: one pass of torch's fused kernel instead of three."""
    torch.lerp(*(torch.from_numpy(a) for a in (start, end, weight)), out=torch.from_numpy(start))
    return start


def jitter_intensity(crops: np.ndarray, contrast: np.ndarray, brightness: np.ndarray, gamma: np.ndarray) -> None:
    """In place on a ``[N, S, S]`` stack: ``contrast * gamma_curve(crop) + brightness`` per crop, the gamma curve
    taken over each crop's own min-max range, background (pixels at 0) left at 0. ``span * unit**gamma`` is
    computed as ``span**(1 - gamma) * exp(gamma * log(crop - low))``: one log and one exp per pixel (the
    minimum pixel's ``log(0) = -inf`` maps to 0, as ``unit**gamma`` does for ``gamma > 0``)."""
    background = crops == 0
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
    np.copyto(crops, 0, where=background)


def bias_field(coefficients: np.ndarray, size: int) -> np.ndarray:
    """``[N, size, size]``: ``exp`` of the log-polynomials with ``coefficients [N, terms]`` (one per
    ``BIAS_FIELD_TERMS`` ``u**i * v**j``) on a ``size x size`` grid of pixel centres in [-1, 1], u down the
    rows. Each term is an outer product, so the polynomials are one batched product of rank ``terms``."""
    along_rows, along_cols = _bias_factors(size)
    field = np.matmul(along_rows * coefficients[:, None, :], along_cols)
    return torch.from_numpy(field).exp_().numpy()


@functools.lru_cache(maxsize=8)
def _bias_factors(size: int) -> tuple[np.ndarray, np.ndarray]:
    """``u**i`` as columns ``[size, terms]`` and ``v**j`` as rows ``[terms, size]`` for each bias field term."""
    u = (2 * np.arange(size, dtype=np.float32) + 1) / size - 1
    along_rows = np.stack([u**i for i, _ in BIAS_FIELD_TERMS], axis=1)
    along_cols = np.stack([u**j for _, j in BIAS_FIELD_TERMS])
    along_rows.flags.writeable = along_cols.flags.writeable = False
    return along_rows, along_cols


def gaussian_blur(crops: np.ndarray, sigma: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter`` (edges replicated, kernels cut at ``BLUR_TRUNCATE`` sigmas) of each
    crop of a ``[N, S, S]`` stack with its own sigma, into ``out`` (which may be ``crops``). Small crops go
    through one batched product with blur operators (``operator @ crop @ operator.T``); larger ones, where
    the products' O(S^3) would dominate, through separable passes over the edge-padded crops in two calls,
    kernels up to ``NARROW_BLUR_RADIUS`` and wider ones (so a narrow kernel skips the widest taps)."""
    radius = np.floor(BLUR_TRUNCATE * sigma + 0.5).astype(np.intp)
    size = crops.shape[-1]
    if size <= OPERATOR_BLUR_MAX_SIZE:
        operators = blur_operators(gaussian_kernels(sigma, radius, int(radius.max())), size)
        return np.matmul(operators @ crops, operators.transpose(0, 2, 1), out=out)
    if out is None:
        out = np.empty_like(crops)
    narrow = radius <= NARROW_BLUR_RADIUS
    for rows in (narrow.nonzero()[0], (~narrow).nonzero()[0]):
        if rows.size == len(crops):  # one class only: no gather, no scatter
            rows = slice(None)
        elif rows.size == 0:
            continue
        reach = int(radius[rows].max())
        out[rows] = separable_blur(crops[rows], gaussian_kernels(sigma[rows], radius[rows], reach), reach)
    return out


def gaussian_kernels(sigma: np.ndarray, radius: np.ndarray, reach: int) -> np.ndarray:
    """``[N, 2 * reach + 1]`` normalised Gaussian taps, zero beyond each kernel's own ``radius``."""
    offsets = np.arange(-reach, reach + 1)
    kernel = np.exp(-0.5 * (offsets / sigma[:, None]) ** 2) * (np.abs(offsets) <= radius[:, None])
    return (kernel / kernel.sum(axis=1, keepdims=True)).astype(np.float32)


def separable_blur(crops: np.ndarray, kernel: np.ndarray, reach: int) -> np.ndarray:
    """Correlate every row and column of each crop of ``crops [N, S, S]`` with its ``kernel [N, 2 * reach + 1]``,
    edges replicated; returns a view of a fresh array."""
    if reach == 0:
        return crops
    count, size = crops.shape[0], crops.shape[-1]
    width = size + 2 * reach
    padded = np.empty((count, width, width), dtype=np.float32)
    padded[:, reach:-reach, reach:-reach] = crops
    padded[:, reach:-reach, :reach] = crops[:, :, :1]
    padded[:, reach:-reach, -reach:] = crops[:, :, -1:]
    padded[:, :reach] = padded[:, reach:reach + 1]
    padded[:, -reach:] = padded[:, -reach - 1:-reach]
    # Each crop flattened: a vertical tap is a shift by whole rows, a horizontal one by pixels (the padding
    # keeps those inside their row), so every pass reads contiguous memory. The vertical taps are one einsum
    # over a view whose tap axis steps by rows (faster than shifted adds there, slower for the horizontal ones).
    flat = padded.reshape(count, -1)
    step = flat.strides[1]
    taps = np.lib.stride_tricks.as_strided(flat, (count, 2 * reach + 1, size * width),
                                           (flat.strides[0], width * step, step))
    columns = np.einsum("nt,ntl->nl", kernel, taps)
    blurred = np.empty((count, size, width), dtype=np.float32)  # row y from column `reach` of padded row y
    _shifted_sum(columns, kernel[:, reach:, None], blurred.reshape(count, -1)[:, :-2 * reach])
    return blurred[:, :, :size]


def _shifted_sum(flat: np.ndarray, weights: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out [N, L] = sum_t weights[:, |t|] * flat[:, reach + t + i]`` over t in -reach..reach, ``weights`` holding
    the centre tap then one side (kernels are symmetric, so each pair of taps is added before it is weighted)."""
    reach, length = weights.shape[1] - 1, out.shape[1]
    np.multiply(flat[:, reach:reach + length], weights[:, 0], out=out)
    pair = np.empty_like(out)
    for offset in range(1, reach + 1):
        np.add(flat[:, reach - offset:reach - offset + length], flat[:, reach + offset:reach + offset + length],
               out=pair)
        pair *= weights[:, offset]
        out += pair
    return out


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
    windows = np.lib.stride_tricks.as_strided(along[:, size - 1:], (count, size, size), (along.strides[0], -step, step))
    operators = windows.copy()
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


def add_noise(crops: np.ndarray, sigma: np.ndarray, normals: np.ndarray) -> None:
    """In place on a ``[N, S, S]`` stack: Gaussian noise (``normals [N, 1, S, S]`` standard normals), or Rician
    (``normals [N, 2, S, S]``): the magnitude of complex Gaussian noise added to each crop shifted so its
    minimum is 0 (Rician noise lives on non-negative magnitudes; z-scored slices go negative). Works in
    ``normals``."""
    sigma = sigma[:, None, None]
    real = normals[:, 0]
    real *= sigma
    if normals.shape[1] == 1:
        crops += real
        return
    floor = crops.min(axis=(1, 2), keepdims=True)
    real += crops
    real -= floor
    real *= real
    imaginary = normals[:, 1]
    imaginary *= sigma
    imaginary *= imaginary
    real += imaginary
    np.sqrt(real, out=real)
    np.add(real, floor, out=crops)
