"""Intensity normalisation: percentile clipping then z-scoring over the foreground."""

from __future__ import annotations

import numpy as np

from braindino.volumes.canonical import CanonicalVolume

SAMPLE_SIZE = 1 << 16  # values sampled to place the tail thresholds of a large array
TAIL_MARGIN_SIGMAS = 8.0  # how far beyond a sampled quantile its threshold sits, in binomial standard deviations


def percentiles(values: np.ndarray, qs: tuple[float, ...], where: np.ndarray | None = None) -> np.ndarray:
    """Exact linear-interpolated percentiles of ``values[where]`` (all values without ``where``).

    Equals ``np.percentile(values[where], qs)`` (the default "linear" method) for finite values, without
    gathering ``values[where]`` and without sorting. Only the values at a few ranks are needed: a large
    array gives them from its tails (``tail_values``), anything else from ``np.partition``.
    """
    flat, mask = flat_pair(values, where)
    count = flat.size if mask is None else int(np.count_nonzero(mask))
    if count == 0:
        raise ValueError("percentiles of an empty array")
    positions = np.asarray(qs, dtype=np.float64) / 100.0 * (count - 1)
    lower = np.floor(positions).astype(np.intp)
    upper = np.minimum(lower + 1, count - 1)
    ranks = np.unique(np.concatenate([lower, upper]))
    selected = tail_values(flat, mask, count, ranks) if count > 4 * SAMPLE_SIZE else None
    if selected is None:
        selected = np.partition(flat if mask is None else flat[mask], ranks)[ranks]
    weight = positions - lower
    return selected[np.searchsorted(ranks, lower)] * (1.0 - weight) + selected[np.searchsorted(ranks, upper)] * weight


def flat_pair(values: np.ndarray, where: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """``values`` and ``where`` flattened in the same element order (``values``' own memory order: no copy)."""
    order = "F" if values.flags.f_contiguous and not values.flags.c_contiguous else "C"
    if where is not None and np.shape(where) != values.shape:
        raise ValueError(f"percentiles: where has shape {np.shape(where)}, values {values.shape}")
    return values.ravel(order), None if where is None else np.asarray(where, dtype=bool).ravel(order)


def tail_values(flat: np.ndarray, mask: np.ndarray | None, count: int, ranks: np.ndarray) -> np.ndarray | None:
    """The values at ``ranks`` (sorted) of ``flat[mask]``, selected among the values in its two tails.

    A strided sample of about ``SAMPLE_SIZE`` values places a limit a safe margin beyond the highest
    rank of the lower half and one below the lowest rank of the upper half; the values beyond the limits
    are gathered in one pass and the ranks selected among them by ``np.partition``. That is exact as
    soon as each tail holds every value up to its ranks, which is checked: ``None`` when a tail falls
    short (then the caller partitions everything).
    """
    step = max(1, count // SAMPLE_SIZE)
    sample = flat[::step] if mask is None else flat[::step][mask[::step]]
    if sample.size < SAMPLE_SIZE // 4:
        return None
    sample = np.sort(sample)
    low = ranks < count // 2
    need_lower = int(ranks[low][-1]) + 1 if low.any() else 0  # smallest values the lower tail must hold
    need_upper = count - int(ranks[~low][0]) if not low.all() else 0  # largest values the upper tail must hold
    low_limit = sampled_quantile(sample, need_lower / count, +1) if need_lower else -np.inf
    high_limit = sampled_quantile(sample, 1.0 - need_upper / count, -1) if need_upper else np.inf
    if low_limit >= high_limit:
        return None
    chosen = flat <= low_limit
    chosen |= flat >= high_limit
    if mask is not None:
        chosen &= mask
    tails = flat[chosen]
    lower, upper = tails[tails <= low_limit], tails[tails >= high_limit]
    if lower.size < need_lower or upper.size < need_upper:
        return None
    in_upper = ranks[~low] - (count - upper.size)
    return np.concatenate([np.partition(lower, ranks[low])[ranks[low]], np.partition(upper, in_upper)[in_upper]])


def sampled_quantile(sample: np.ndarray, fraction: float, side: int) -> float:
    """The sorted ``sample``'s quantile ``fraction`` moved ``TAIL_MARGIN_SIGMAS`` standard errors to ``side``."""
    margin = TAIL_MARGIN_SIGMAS * np.sqrt(fraction * (1.0 - fraction) / sample.size) + 2.0 / sample.size
    index = int(np.floor((fraction + side * margin) * sample.size))
    return sample[min(max(index, 0), sample.size - 1)]


def normalise_intensity(
    vol: CanonicalVolume, clip: tuple[float, float] = (0.5, 99.5), mask: np.ndarray | None = None,
    in_place: bool = False,
) -> CanonicalVolume:
    """Clip to the ``clip`` percentiles of the foreground, then z-score over the foreground.

    Foreground is ``mask`` when given (a boolean array on the volume's grid), otherwise the non-zero
    voxels. Voxels outside the foreground are set to exactly 0. Raises ``ValueError`` when the
    foreground is empty or constant (nothing to normalise). Works on whole arrays in the volume's
    layout, without gathering the foreground: clip, subtract the mean, zero the background, divide by
    the standard deviation (of the centred, zeroed array: no cancellation). With ``in_place`` the
    result is written into ``vol.data`` (for a caller that gives ``vol`` up).
    """
    data = vol.data
    foreground = (data != 0) if mask is None else np.asarray(mask, dtype=bool)
    if foreground.shape != vol.shape:
        raise ValueError(f"mask shape {foreground.shape} does not match volume shape {vol.shape}")
    count = int(np.count_nonzero(foreground))
    if count == 0:
        raise ValueError("normalise_intensity: the foreground is empty (an all-zero volume or mask)")
    low, high = percentiles(data, clip, where=foreground)
    if mask is not None:
        data, in_place = np.where(foreground, data, np.float32(0)), True  # a fresh array to write into
    out = np.clip(data, np.float32(low), np.float32(high), out=data if in_place else None)  # 4x max + min
    flat = out.ravel("K")
    background_value = float(np.clip(np.float32(0), np.float32(low), np.float32(high)))
    mean = (float(flat.sum()) - (flat.size - count) * background_value) / count  # pairwise: error ~1e-7
    out -= np.float32(mean)
    bits = out.view(np.uint32)  # zero the background through the bit patterns: +0.0 (a float product gives -0.0)
    np.multiply(bits, foreground, out=bits)
    std = float(np.sqrt(np.dot(flat, flat) / count))
    if std == 0.0:
        raise ValueError("normalise_intensity: the foreground is constant after clipping")
    out /= np.float32(std)
    return vol.with_data(
        out,
        intensity={
            "rule": "clip_percentiles_then_zscore",
            "clip_percentiles": [float(clip[0]), float(clip[1])],
            "clip_values": [float(low), float(high)],
            "mean": mean,
            "std": std,
            "foreground": "non_zero" if mask is None else "mask",
        },
    )
