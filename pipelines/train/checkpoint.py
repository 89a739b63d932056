"""The checkpoint layout (version 2) and how a run saves and restores it.

A checkpoint is one directory:

    .metadata, __<rank>_0.distcp   torch.distributed.checkpoint of {"student", "teacher", "optimizer"
                                   [, "gram_teacher"]}, written collectively by every rank; DCP
                                   reshards on load, so a different number of workers can read it
    train_state.json               ``TrainState``: stage, next step, data position (``DataPosition``
                                   under ``data``), MLflow run id; a version-1 file (the position's
                                   fields at the top level) is read through ``upgrade_state``
    rng/rank<R>.json               each rank's torch/NumPy/Python RNG state as plain numbers (nothing to
                                   unpickle; restored when the world size matches)

DCP itself stores ``.metadata`` as a pickle that torch unpickles on load (the tensors load with
``weights_only``): checkpoint storage must be writable only by training jobs. Schedules are pure
functions of the step, so the step restores them. Under Ray Train every rank writes
its part into its own local directory and reports it with ``ray.train.report``; ``upload_checkpoint``
copies it into the one checkpoint directory in the run's storage.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

LAYOUT_VERSION = 2
STATE_FILE = "train_state.json"
_POSITION_FIELDS = ("data_epoch", "batches_in_epoch", "samples_seen")


@dataclass
class DataPosition:
    """Where a worker is in its data stream; a restart skips what the current pass already consumed."""

    data_epoch: int = 0  # completed passes over the worker's dataset shard
    batches_in_epoch: int = 0  # batches consumed in the current pass
    samples_seen: int = 0  # by this worker, over the whole run


@dataclass
class TrainState:
    """Where a run is: the next iteration to run (counted across stages) and the data position."""

    stage: str = "stage1"
    step: int = 0
    data: DataPosition = field(default_factory=DataPosition)
    mlflow_run_id: str = ""
    world_size: int = 1
    diverged: bool = False
    version: int = LAYOUT_VERSION

    @classmethod
    def read(cls, directory: str | Path) -> "TrainState":
        path = Path(directory) / STATE_FILE
        raw = upgrade_state(json.loads(path.read_text()), path)
        return cls(**{**raw, "data": DataPosition(**raw["data"])})

    def write(self, directory: str | Path) -> None:
        (Path(directory) / STATE_FILE).write_text(json.dumps(asdict(self), indent=1))


def upgrade_state(raw: dict, source: Path) -> dict:
    """A ``train_state.json`` mapping in the current layout; version 1 kept the position's fields at the top."""
    if raw.get("version") == 1:
        raw = {**{k: v for k, v in raw.items() if k not in _POSITION_FIELDS},
               "data": {k: raw[k] for k in _POSITION_FIELDS}, "version": 2}
    if raw.get("version") != LAYOUT_VERSION:
        raise ValueError(f"{source}: checkpoint layout version {raw.get('version')} is not {LAYOUT_VERSION}")
    return raw


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def model_parts(model: nn.Module) -> dict[str, nn.Module]:
    """The networks a ``SelfDistillation`` checkpoint holds."""
    parts = {"student": model.student, "teacher": model.teacher}
    if getattr(model, "gram_teacher", None) is not None:
        parts["gram_teacher"] = model.gram_teacher
    return parts


def save_checkpoint(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    state: TrainState) -> Path:
    """Collective: every rank calls it with its own ``directory`` (or all with one shared directory)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sharded = StateDictOptions(full_state_dict=False)  # each rank writes its own shards
    tree = {name: get_model_state_dict(net, options=sharded) for name, net in model_parts(model).items()}
    if optimizer is not None:
        tree["optimizer"] = get_optimizer_state_dict(model.student, optimizer, options=sharded)
    dcp.save(tree, checkpoint_id=str(directory))
    (directory / "rng").mkdir(exist_ok=True)
    (directory / "rng" / f"rank{_rank()}.json").write_text(json.dumps(rng_state()))
    if _rank() == 0:
        state.world_size = _world()
        state.write(directory)
    return directory


def load_checkpoint(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    parts: tuple[str, ...] | None = None, restore_rng: bool = True) -> TrainState:
    """Restore ``parts`` (default: every network the model has, plus the optimizer when given).

    Works on any world size: DCP reads each rank's shards from whichever files hold them.
    """
    directory = Path(directory)
    state = TrainState.read(directory)
    networks = {name: net for name, net in model_parts(model).items() if parts is None or name in parts}
    tree = {name: get_model_state_dict(net) for name, net in networks.items()}
    if optimizer is not None:
        tree["optimizer"] = get_optimizer_state_dict(model.student, optimizer)
    dcp.load(tree, checkpoint_id=str(directory))
    for name, net in networks.items():
        set_model_state_dict(net, tree[name])
    if optimizer is not None:
        set_optimizer_state_dict(model.student, optimizer, tree["optimizer"])
    rng_file = directory / "rng" / f"rank{_rank()}.json"
    if restore_rng and state.world_size == _world() and rng_file.exists():
        set_rng_state(json.loads(rng_file.read_text()))
    return state


def rng_state() -> dict:
    """This process's torch (CPU), NumPy and Python RNG states as JSON-ready numbers."""
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state().tolist(),
            "numpy": {"keys": keys.tolist(), "position": int(position), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(cached_gaussian)},
            "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    saved = state["numpy"]
    np.random.set_state(("MT19937", np.array(saved["keys"], dtype=np.uint32), saved["position"], saved["has_gauss"],
                         saved["cached_gaussian"]))
    saved = state["python"]
    random.setstate((saved["version"], tuple(saved["internal"]), saved["gauss_next"]))


def load_backbone_weights(directory: str | Path, part: str = "teacher") -> dict[str, torch.Tensor]:
    """Full (unsharded) backbone tensors of ``part`` from a checkpoint, without a process group.

    Used by registration (the released encoder is the EMA teacher) and by the Gram teacher of stage 2.
    """
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    prefix = f"{part}.backbone."
    metadata = dcp.FileSystemReader(str(directory)).read_metadata()
    tensors = {
        key: torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in metadata.state_dict_metadata.items()
        if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata)
    }
    if not tensors:
        raise KeyError(f"{directory}: checkpoint holds no {part!r} backbone (keys start with {prefix!r})")
    dcp.load(tensors, checkpoint_id=str(directory), no_dist=True)
    return {key.removeprefix(prefix): value for key, value in tensors.items()}


def upload_checkpoint(checkpoint, directory_name: str):
    """Ray Train's ``checkpoint_upload_fn``: copy this rank's part into the run's storage, failing on any file.

    Ray's default upload (``pyarrow.fs.copy_files``) ignores a PUT that failed after its retries, when the
    file is closed: the checkpoint would be registered without that file. Here a failed upload raises, the
    worker group fails and Ray Train restarts it from the last checkpoint that landed whole.
    """
    import ray.train

    storage = ray.train.get_context().get_storage()
    filesystem = storage.storage_filesystem
    destination = storage.build_checkpoint_path_from_name(directory_name)
    source = Path(checkpoint.path)
    for file in sorted(path for path in source.rglob("*") if path.is_file()):
        target = f"{destination}/{file.relative_to(source).as_posix()}"
        if filesystem.type_name != "s3":  # object stores have no folders to create
            filesystem.create_dir(target.rsplit("/", 1)[0], recursive=True)
        with file.open("rb") as local, filesystem.open_output_stream(target) as remote:
            shutil.copyfileobj(local, remote, 16 * 2**20)
    return ray.train.Checkpoint(filesystem=filesystem, path=destination)
