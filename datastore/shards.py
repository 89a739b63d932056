"""WebDataset shards: plain tar files of slice samples, the format pretraining streams.

Written by ingest, read by training, evaluation and the benchmarks, all through this module.
Sample format (``SAMPLE_FORMAT_VERSION``), one ``Sample`` per kept axial slice, members ``<key>.npy``
and ``<key>.json``:

- ``npy``: the ``slice_size x slice_size`` slice as float16 ``.npy`` (rows left -> right, columns
  posterior -> anterior, as ``volume[:, :, z]`` after centred pad/crop). float16 halves the bytes of
  float32, keeps z-scored intensities within 1e-3 (relative error <= 2^-11) and decodes with the default
  decoders of Ray's ``read_webdataset`` and ``webdataset``; compression (zlib) would save another ~2x
  but every reader would have to install its decoder (sizes in ``benchmarks/README.md``).
- ``json``: a ``SampleRecord`` (dataset, subject and session pseudonyms, sequence, volume_id, z,
  foreground fraction, spacing, format version). Nothing identifying.

The key is ``<volume_id>_z<zzz>`` (no dots: WebDataset splits member names at the first dot). A run's
shards live in ``shards/<run_id>/`` under the output root, each named by a digest of its sample keys,
so a rewrite of the same samples gives the same name.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import numpy as np
import pyarrow.fs as pafs
import torch

from datastore.files import write_bytes

SAMPLE_FORMAT_VERSION = 1
SAMPLE_DTYPE = np.float16
SHARDS_FOLDER = "shards"


@dataclass(frozen=True)
class SampleRecord:
    """The ``.json`` member of a sample: which slice of which scan it is."""

    dataset: str
    subject: str  # keyed pseudonym
    session: str  # keyed pseudonym, "" when the dataset has no sessions
    sequence: str  # T1w, T2w, FLAIR, ... or "unknown"
    volume_id: str
    z: int  # axial index in the canonical volume
    foreground_fraction: float
    spacing: list[float]  # mm per voxel of the canonical volume
    format: int = SAMPLE_FORMAT_VERSION

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> SampleRecord:
        raw = json.loads(data)
        if raw.get("format") != SAMPLE_FORMAT_VERSION:
            raise ValueError(f"sample record format {raw.get('format')!r} is not supported "
                             f"(this code reads {SAMPLE_FORMAT_VERSION}): {raw}")
        known = {f.name for f in fields(cls)}
        if set(raw) != known:
            raise ValueError(f"sample record has keys {sorted(raw)}; format {SAMPLE_FORMAT_VERSION} has {sorted(known)}")
        return cls(**raw)


class Sample(NamedTuple):
    key: str
    image: np.ndarray  # [slice_size, slice_size], SAMPLE_DTYPE when read back
    record: SampleRecord


def sample_key(volume_id: str, z: int) -> str:
    return f"{volume_id}_z{z:03d}"


def shard_path(run_id: str, keys: Iterable[str]) -> str:
    """Where a run's shard of these sample keys lives, relative to the output root."""
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()
    return f"{SHARDS_FOLDER}/{run_id}/{digest[:20]}.tar"


def sample_stack(images: Sequence[np.ndarray]) -> np.ndarray:
    """Equal-shaped 2D slices as one C-contiguous ``[n, H, W]`` ``SAMPLE_DTYPE`` array, in one conversion.

    torch's float32 -> float16 cast (F16C) is about 15x faster than numpy's and rounds the same way
    (to nearest even).
    """
    if not images:
        return np.zeros((0, 0, 0), dtype=SAMPLE_DTYPE)
    out = np.empty((len(images), *images[0].shape), dtype=SAMPLE_DTYPE)
    target = torch.from_numpy(out)
    for k, image in enumerate(images):
        target[k].copy_(torch.from_numpy(np.asarray(image, dtype=np.float32)))
    return out


def npy_bytes(image: np.ndarray) -> bytes:
    """``image`` as the bytes ``np.save`` writes for it in ``SAMPLE_DTYPE`` (header built once per shape)."""
    image = np.ascontiguousarray(image, dtype=SAMPLE_DTYPE)
    return b"".join([npy_header(image.shape), memoryview(image).cast("B")])  # one copy of the pixels


@functools.cache
def npy_header(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(SAMPLE_DTYPE)),
                                                  "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def write_shard(fs: pafs.FileSystem, path: str, samples: Iterable[Sample]) -> int:
    """Write samples as one tar at ``path``, whole or not at all (``write_bytes``); returns its size.

    The tar is built in memory first (a shard is tens of MB), so a failure while building it or
    uploading it never leaves a truncated tar that a reader would take for a smaller shard.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for key, image, record in samples:
            for suffix, data in (("npy", npy_bytes(image)), ("json", record.to_json())):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    write_bytes(fs, path, buffer.getvalue())
    return buffer.tell()


def read_shard(fs: pafs.FileSystem, path: str) -> Iterator[Sample]:
    """The samples of one shard, in stored order."""
    with fs.open_input_stream(path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        members: dict[str, dict[str, bytes]] = {}
        for member in tar:
            key, _, suffix = member.name.partition(".")
            members.setdefault(key, {})[suffix] = tar.extractfile(member).read()
            if len(members[key]) == 2:
                parts = members.pop(key)
                yield Sample(key, np.load(io.BytesIO(parts["npy"])), SampleRecord.from_json(parts["json"]))


def list_shards(fs: pafs.FileSystem, folder: str) -> list[str]:
    """The ``*.tar`` files under ``folder`` (folder-marker objects and anything else skipped)."""
    infos = fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True))
    return sorted(info.path for info in infos if info.is_file and info.path.endswith(".tar"))
