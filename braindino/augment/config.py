"""Multi-crop augmentation settings shared by the CPU and the batched form.

Input contract: a slice is a 2D float array z-scored over the brain with background exactly 0, as
``ingest`` writes it. Foreground means ``pixel != 0``. Intensities are in z units, so brightness and
noise sigmas are in standard deviations of the brain.

Only MRI-plausible operations exist: there is deliberately no hue, saturation, grayscale or solarise
setting, because a single-channel magnitude image has no colour to perturb.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Exponents (i, j) of the bias field's log-polynomial terms u**i * v**j over crop coordinates in [-1, 1].
BIAS_FIELD_TERMS = ((1, 0), (0, 1), (2, 0), (1, 1), (0, 2))
# Gaussian blur kernels stop at this many sigmas (radius = int(BLUR_TRUNCATE * sigma + 0.5)).
BLUR_TRUNCATE = 3.0


@dataclass(frozen=True)
class MultiCropConfig:
    """Crop geometry and the MRI intensity augmentations applied to every crop.

    Per crop, in order: random resized crop (area fraction in ``*_scale`` of the slice, aspect ratio in
    ``aspect_ratio``; the first of ``max_crop_tries`` boxes with at least ``min_brain_fraction``
    foreground, else the one with the most), left-right flip with ``flip_p``; with ``intensity_p`` a
    gamma curve over the crop's min-max range, then contrast (multiply) and brightness (add); with
    ``bias_field_p`` a multiplicative bias field, ``exp`` of a quadratic polynomial with coefficients in
    +-``bias_field_strength``; background reset to 0; Gaussian blur with ``blur_p`` (sigma in output
    pixels); noise with ``noise_p`` (sigma in z units).
    """

    n_global: int = 2
    global_size: int = 224
    global_scale: tuple[float, float] = (0.32, 1.0)
    n_local: int = 8
    local_size: int = 96
    local_scale: tuple[float, float] = (0.05, 0.32)
    aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    min_brain_fraction: float = 0.25
    max_crop_tries: int = 10
    flip_p: float = 0.5
    intensity_p: float = 0.8
    contrast: tuple[float, float] = (0.75, 1.25)
    brightness: tuple[float, float] = (-0.25, 0.25)
    gamma: tuple[float, float] = (0.7, 1.5)
    bias_field_p: float = 0.3
    bias_field_strength: float = 0.3
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    noise_p: float = 0.3
    noise_kind: Literal["rician", "gaussian"] = "rician"
    noise_sigma: tuple[float, float] = (0.02, 0.15)

    def __post_init__(self) -> None:
        for name in ("flip_p", "intensity_p", "bias_field_p", "blur_p", "noise_p", "min_brain_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"MultiCropConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("global_scale", "local_scale", "aspect_ratio", "contrast", "brightness", "gamma",
                     "blur_sigma", "noise_sigma"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"MultiCropConfig.{name} must be (low, high) with low <= high, got {(low, high)}")
        if not (0 < self.global_scale[0] and self.global_scale[1] <= 1 and 0 < self.local_scale[0]
                and self.local_scale[1] <= 1):
            raise ValueError("MultiCropConfig.global_scale and local_scale are area fractions in (0, 1]")
        if self.n_global < 1 or self.n_local < 0 or self.max_crop_tries < 1:
            raise ValueError("MultiCropConfig needs n_global >= 1, n_local >= 0 and max_crop_tries >= 1")
        if self.noise_kind not in ("rician", "gaussian"):
            raise ValueError(f"MultiCropConfig.noise_kind must be 'rician' or 'gaussian', got {self.noise_kind!r}")
        if self.gamma[0] <= 0 or self.blur_sigma[0] <= 0 or self.noise_sigma[0] < 0:
            raise ValueError("MultiCropConfig.gamma and blur_sigma must be positive, noise_sigma non-negative")

    def views(self) -> tuple[tuple[int, int, tuple[float, float]], ...]:
        """``(count, output size, scale range)`` for the global then the local views."""
        return ((self.n_global, self.global_size, self.global_scale),
                (self.n_local, self.local_size, self.local_scale))
