"""Per-core throughput of the per-scan ingest step on the real-MRI catalogue.

Three chains run on the same in-memory scan bytes (storage I/O excluded), each in its own process so
that its peak RSS is its own, with NumPy/BLAS pinned to one thread:
- ``floor``: only decompress and decode to a float32 array (nibabel's parse, scaled in float32 as our
  reader does: cheaper than nibabel's float64 scaling), the least any chain must do;
- ``braindino``: ``ingest.process.process_scan`` (bounded read, validation, RAS canonicalisation, linear
  resampling, exact percentiles, z-score, slicing) plus what the job does with the kept slices before
  they reach a shard: one float16 stack (``sample_stack``), then every slice's ``.npy`` bytes
  (``npy_bytes``, the shard writer's encoder);
- ``monai_style``: a MONAI-STYLE chain written here with plain nibabel/SciPy the obvious way (float64
  load, ``as_closest_canonical``, ``scipy.ndimage.zoom`` order 3, full-sort percentiles, per-slice
  ``np.pad``, ``np.save`` of a float16 copy per slice). It is NOT MONAI (not installed here); it stands
  for a typical transform chain.

Two inputs: the 1 mm catalogue volumes as shipped, and the same volumes thinned to 1 x 1 x 3 mm (every
third axial slice, stored .nii.gz) so that every scan needs resampling back to 1 mm.

Rates are per second of the process's CPU time (one core's seconds, which time-slicing by other jobs
on a shared machine does not inflate); wall time is reported beside them. The load still changes from
second to second (caches, memory bandwidth), so the chains take turns: ``--rounds`` rounds, each giving
every chain ``--seconds / --rounds`` CPU seconds. ``mean`` is over all rounds, ``best`` is the
least-disturbed round. Usage:
    python benchmarks/ingest_speed.py --out ingest.json [--seconds 30] [--rounds 5] [--max-scans 300]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import gzip
import importlib
import io
import json
import platform
import resource
import subprocess
import sys
import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from braindino.volumes import PreprocessSpec
from infra.local.catalogue import available
from ingest.process import ScanPayload, process_scan
from ingest.readers.nifti import float32_voxels

CHAINS = ("floor", "braindino", "monai_style")
INPUTS = ("iso_1mm", "aniso_1x1x3mm")
SPEC = PreprocessSpec()


def catalogue_payloads(inputs: str) -> list[ScanPayload]:
    """The catalogue's 1 mm head/brain images as payloads; for ``aniso_1x1x3mm``, thinned along z first."""
    payloads = []
    for item in available("image"):
        if item.subject not in ("icbm152", "colin27"):
            continue
        raw = item.path.read_bytes()
        if inputs == "aniso_1x1x3mm":
            img = nib.load(str(item.path))
            data = np.asarray(img.dataobj)[:, :, ::3]
            thick = nib.Nifti1Image(data, img.affine @ np.diag([1.0, 1.0, 3.0, 1.0]), img.header)
            payloads.append(ScanPayload(f"{item.name}_1x1x3.nii.gz", {"scan.nii.gz": gzip.compress(thick.to_bytes(), 6)}))
        else:
            payloads.append(ScanPayload(item.name, {item.path.name: raw}))
    return payloads


def numpy_npy(image: np.ndarray, dtype: type = np.float32) -> bytes:
    """``image`` cast with NumPy and written by ``np.save``: the obvious encoder."""
    buffer = io.BytesIO()
    np.save(buffer, image.astype(dtype, copy=False), allow_pickle=False)
    return buffer.getvalue()


def run_floor(payload: ScanPayload) -> int:
    (name, raw), = payload.files.items()
    raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    float32_voxels(nib.Nifti1Image.from_bytes(raw).dataobj)  # the cheapest decode we know (ours)
    return 0


def run_braindino(payload: ScanPayload) -> int:
    from datastore.shards import npy_bytes, sample_stack  # imported by ``worker`` before the clock starts

    result = process_scan(payload, SPEC)
    if not result.ok:
        raise RuntimeError(f"{payload.key} quarantined: {result.reason}: {result.detail}")
    for image in sample_stack([kept.image for kept in result.slices]):
        npy_bytes(image)
    return len(result.slices)


def run_monai_style(payload: ScanPayload) -> int:
    """Load float64, reorient, zoom (cubic), full-sort percentiles, z-score, pad/crop every slice."""
    (name, raw), = payload.files.items()
    raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    img = nib.as_closest_canonical(nib.Nifti1Image.from_bytes(raw))
    data = img.get_fdata()
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    if not np.allclose(zooms, SPEC.spacing):
        data = ndimage.zoom(data, zooms / np.asarray(SPEC.spacing), order=3)
    foreground = data != 0
    ordered = np.sort(data[foreground])
    low, high = (ordered[int(round(p / 100 * (ordered.size - 1)))] for p in SPEC.clip_percentiles)
    clipped = np.clip(data, low, high)
    values = clipped[foreground]
    data = np.where(foreground, (clipped - values.mean()) / values.std(), 0.0).astype(np.float32)
    count = 0
    for z in range(data.shape[2]):
        image = data[:, :, z]
        fraction = np.count_nonzero(image) / image.size
        if fraction < SPEC.min_foreground:
            continue
        pads = [((SPEC.slice_size - n) // 2, SPEC.slice_size - n - (SPEC.slice_size - n) // 2) for n in image.shape]
        padded = np.pad(image, [(max(a, 0), max(b, 0)) for a, b in pads])
        starts = [(n - SPEC.slice_size) // 2 for n in padded.shape]
        numpy_npy(padded[starts[0] : starts[0] + SPEC.slice_size, starts[1] : starts[1] + SPEC.slice_size], np.float16)
        count += 1
    return count


RUNNERS = {"floor": run_floor, "braindino": run_braindino, "monai_style": run_monai_style}


def worker(chain: str, inputs: str, seconds: float, max_scans: int, first_scan: int) -> dict:
    """Cycle the catalogue through one chain, from ``first_scan`` on, until the time or scan budget is spent."""
    if chain == "braindino":  # torch, for the float16 stack: only this chain's process loads it, as the job's workers do
        importlib.import_module("datastore.shards")
    payloads = catalogue_payloads(inputs)
    loaded_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # imports + catalogue bytes
    run = RUNNERS[chain]
    scans = slices = 0
    cycle_rss_mb = None
    start, wall_start = time.process_time(), time.perf_counter()
    while scans < max_scans and time.process_time() - start < seconds:
        slices += run(payloads[(first_scan + scans) % len(payloads)])
        scans += 1
        if scans == len(payloads):  # every catalogue scan seen once: later growth would be a leak
            cycle_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    elapsed, wall = time.process_time() - start, time.perf_counter() - wall_start
    return {
        "chain": chain,
        "inputs": inputs,
        "catalogue_scans": len(payloads),
        "scans": scans,
        "slices": slices,
        "seconds": round(elapsed, 2),
        "wall_seconds": round(wall, 2),
        "scans_per_s_per_core": round(scans / elapsed, 3),
        "slices_per_s_per_core": round(slices / elapsed, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_after_loading_catalogue_mb": round(loaded_rss_mb, 1),
        "peak_rss_after_one_cycle_mb": None if cycle_rss_mb is None else round(cycle_rss_mb, 1),
    }


def summarise(inputs: str, chain: str, parts: list[dict]) -> dict:
    """One chain's rounds: totals, mean and best rates, worst peak RSS."""
    scans, slices = sum(p["scans"] for p in parts), sum(p["slices"] for p in parts)
    seconds = sum(p["seconds"] for p in parts)
    wall = sum(p["wall_seconds"] for p in parts)
    return {
        "chain": chain,
        "inputs": inputs,
        "catalogue_scans": parts[0]["catalogue_scans"],
        "rounds": len(parts),
        "scans": scans,
        "slices": slices,
        "cpu_seconds": round(seconds, 2),
        "wall_seconds": round(wall, 2),
        "scans_per_s_per_core": {"mean": round(scans / seconds, 3), "best": max(p["scans_per_s_per_core"] for p in parts)},
        "slices_per_s_per_core": {"mean": round(slices / seconds, 1), "best": max(p["slices_per_s_per_core"] for p in parts)},
        "peak_rss_mb": max(p["peak_rss_mb"] for p in parts),
        "peak_rss_after_loading_catalogue_mb": max(p["peak_rss_after_loading_catalogue_mb"] for p in parts),
        "peak_rss_after_one_cycle_mb": max((p["peak_rss_after_one_cycle_mb"] or 0) for p in parts) or None,
    }


def slice_encodings() -> dict:
    """Bytes and encode time per 256 x 256 slice for candidate shard encodings, per 1 mm catalogue scan."""
    from datastore.shards import npy_bytes, sample_stack

    def float16_npy(image: np.ndarray) -> bytes:  # as the job stores a slice
        return npy_bytes(sample_stack([image])[0])

    encoders = {
        "float32_npy": numpy_npy,
        "float16_npy_numpy_cast": lambda s: numpy_npy(s, np.float16),
        "float16_npy": float16_npy,
        "float16_npy_zlib1": lambda s: zlib.compress(float16_npy(s), 1),
        "float16_npy_zlib6": lambda s: zlib.compress(float16_npy(s), 6),
    }
    report: dict = {"zstd": "not measured: no zstd module in this environment", "scans": {}}
    for payload in catalogue_payloads("iso_1mm"):
        slices = [kept.image for kept in process_scan(payload, SPEC).slices]
        per_scan = {"slices": len(slices)}
        for name, encode in encoders.items():
            start = time.process_time()
            sizes = [len(encode(s)) for s in slices]
            per_scan[name] = {
                "bytes_per_slice": int(np.mean(sizes)),
                "encode_cpu_ms_per_slice": round(1000 * (time.process_time() - start) / len(slices), 3),
            }
        report["scans"][payload.key] = per_scan
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=False)
    parser.add_argument("--seconds", type=float, default=30.0, help="time budget per chain and input")
    parser.add_argument("--max-scans", type=int, default=300, help="scan budget per chain and input, over all rounds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--worker", nargs=2, metavar=("CHAIN", "INPUTS"), help=argparse.SUPPRESS)
    parser.add_argument("--first-scan", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.seconds, args.max_scans, args.first_scan)))
        return
    rounds: dict[tuple[str, str], list[dict]] = {(inputs, chain): [] for inputs in INPUTS for chain in CHAINS}
    for round_index in range(args.rounds):
        for inputs, chain in rounds:
            done = sum(part["scans"] for part in rounds[(inputs, chain)])
            command = [sys.executable, __file__, "--worker", chain, inputs, "--seconds", str(args.seconds / args.rounds),
                       "--max-scans", str(max(1, args.max_scans // args.rounds)), "--first-scan", str(done)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rounds[(inputs, chain)].append(json.loads(output.strip().splitlines()[-1]))
            print(round_index, json.dumps(rounds[(inputs, chain)][-1]), flush=True)
    runs = [summarise(inputs, chain, parts) for (inputs, chain), parts in rounds.items()]
    report = {
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "numpy": np.__version__},
        "spec": json.loads(SPEC.to_json()),
        "runs": runs,
        "slice_encodings": slice_encodings(),
    }
    print(json.dumps(report["runs"], indent=1))
    print(json.dumps(report["slice_encodings"], indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
