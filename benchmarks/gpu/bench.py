"""One-GPU checks and measurements of the pretraining step; run by ``benchmarks/gpu/run.sh`` under torchrun.

    torchrun --standalone --nproc_per_node=1 benchmarks/gpu/bench.py {sanity,throughput,memory} --out FILE.json

- ``sanity``: NCCL process group of one rank, FSDP2 with bf16 parameters / fp32 reduction
  (``MixedPrecisionPolicy``), a few steps of the real training step, the EMA update on shards, and a
  distributed-checkpoint save/load round trip.
- ``throughput``: ``base`` at 224 px (2 x 224 + 8 x 96 crops, the ``configs/pretrain/base-gpu.yaml``
  batch), images/s with the batched augmentation on the GPU (eager, and with per-block
  ``torch.compile``) and with the CPU form in DataLoader workers; FLOPs per sample (student forward + backward, teacher forward) counted with
  ``torch.utils.flop_counter`` and the MFU against a dense bf16 peak (989 TFLOP/s for H100/H200 SXM).
- ``memory``: peak GPU memory of the training step for ``base`` and ``large`` at the default batch
  (and ``base`` at the stage-2 resolution).

Slices: real axial slices of the ICBM152 2009c T1/T2 when the catalogue's package is installed,
else synthetic brain-like ellipses (the step's cost does not depend on the pixel values).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from braindino.augment import MultiCropAugment, collate_multicrop
from braindino.config import load_config
from braindino.ssl.masking import BlockMaskGenerator
from pipelines.train.config import PretrainConfig
from pipelines.train.loop import StagePlan, StageTrainer
from pipelines.train.parallelize import mixed_precision

REPO = Path(__file__).resolve().parents[2]
SMOKE: list[str] = []  # --smoke: the same code on CPU/gloo with a micro model (checks the script, not the GPU)
DEVICE = "cuda"
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}


@functools.lru_cache(maxsize=4)
def slices(n: int = 256, size: int = 256) -> np.ndarray:
    """Real z-scored axial slices (background 0) when available, else synthetic ellipses with texture."""
    try:
        from braindino.volumes import PreprocessSpec
        from infra.local.catalogue import slice_stack

        out = slice_stack(("icbm2009c_t1", "icbm2009c_t2"), PreprocessSpec(slice_size=size))
        return np.stack([out[i % len(out)] for i in range(n)])
    except Exception:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
        images = []
        for _ in range(n):
            a, b = rng.uniform(0.6, 0.85, 2)
            inside = (xx / a) ** 2 + (yy / b) ** 2 < 1
            images.append(np.where(inside, rng.normal(0, 1, (size, size)), 0).astype(np.float32))
        return np.stack(images)


def config_for(size: str, stage: str = "stage1", augment_on: str = "worker", overrides: list[str] = ()) -> PretrainConfig:
    return load_config(PretrainConfig, REPO / "configs/pretrain/base-gpu.yaml",
                       [f"model.vit.size={size}", f"data.augment_on={augment_on}", "workers.num_workers=1",
                        "parallel.compile=false", *overrides, *SMOKE])


def trainer_for(config: PretrainConfig, stage: str = "stage1") -> StageTrainer:
    plan = StagePlan(config, stage, run_id="", tracking_uri="")
    return StageTrainer(plan, torch.device(DEVICE), dist.get_rank(), dist.get_world_size())


def gpu_batches(config: PretrainConfig, stage: str, data: torch.Tensor):
    batch = config.stage(stage).batch_size_per_worker
    gpu = data.to(DEVICE)
    while True:
        index = torch.randint(0, len(gpu), (batch,), device=DEVICE)
        yield {"image": gpu[index]}


def cpu_batches(config: PretrainConfig, stage: str, data: np.ndarray, workers: int):
    """The CPU form in DataLoader workers, as Ray Data would run it: per-sample crops, collated per batch."""
    spec = config.stage(stage)

    class Views(torch.utils.data.Dataset):
        def __init__(self):
            self.augment = None

        def __len__(self):
            return 10**9

        def __getitem__(self, i):
            if self.augment is None:
                self.augment = MultiCropAugment(spec.crops, seed=os.getpid())
            return self.augment(data[i % len(data)])

    grid = (spec.crops.global_size // config.model.vit.patch_size,) * 2
    masks = BlockMaskGenerator(grid, *spec.masks.ratio, masked_fraction=spec.masks.probability)
    loader = torch.utils.data.DataLoader(Views(), batch_size=spec.batch_size_per_worker, num_workers=workers,
                                         collate_fn=lambda s: collate_multicrop(s, masks), pin_memory=True,
                                         prefetch_factor=4, persistent_workers=True)
    yield from loader


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed_steps(trainer: StageTrainer, source, prepare, steps: int, warmup: int) -> dict:
    """images/s of ``train_step``; time blocked in ``next(source)`` is the data wait."""
    for i in range(warmup):
        trainer.train_step(prepare(next(source)), trainer.first + i)
    sync()
    wait = 0.0
    start = time.perf_counter()
    for i in range(steps):
        t0 = time.perf_counter()
        raw = next(source)
        wait += time.perf_counter() - t0
        trainer.train_step(prepare(raw), trainer.first + warmup + i)
    sync()
    elapsed = time.perf_counter() - start
    images = steps * trainer.spec.batch_size_per_worker
    return {"images_per_s": images / elapsed, "step_s": elapsed / steps, "data_wait_fraction": wait / elapsed}


def flops_per_sample(config: PretrainConfig, stage: str = "stage1", batch: int = 8) -> dict:
    """Student forward + backward and teacher forward FLOPs of one sample, counted on an unsharded model."""
    from torch.utils.flop_counter import FlopCounterMode

    from braindino.augment import BatchedMultiCrop, batch_from_views
    from braindino.ssl import SelfDistillation

    spec = config.stage(stage)
    model = SelfDistillation(config.model).to(DEVICE)
    images = torch.from_numpy(slices(batch)).to(DEVICE).unsqueeze(1)
    global_crops, local_crops = BatchedMultiCrop(spec.crops)(images)
    grid = (spec.crops.global_size // config.model.vit.patch_size,) * 2
    masks = BlockMaskGenerator(grid, *spec.masks.ratio, masked_fraction=spec.masks.probability)
    crops = batch_from_views(global_crops, local_crops, spec.crops.n_global, spec.crops.n_local, masks)
    with torch.autocast(DEVICE, dtype=torch.bfloat16), FlopCounterMode(display=False) as counter:
        loss, _ = model(crops, teacher_temp=0.04)
        loss.backward()
    total = counter.get_total_flops()
    vit = config.model.vit
    del model
    empty_cache()
    return {"flops_per_sample": total / batch, "counted_batch": batch, "vit": vit.size}


def empty_cache() -> None:
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def device_name() -> str:
    return torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu (smoke)"


def peak_gib(kind: str) -> float:
    if DEVICE != "cuda":
        return float("nan")
    return (torch.cuda.max_memory_allocated() if kind == "allocated" else torch.cuda.max_memory_reserved()) / 2**30


def peak_for(name: str) -> float:
    for key, value in PEAK_BF16.items():
        if key in name:
            return value
    return PEAK_BF16["H100"]


def sanity(out: dict) -> None:
    """NCCL + FSDP2 + bf16 on the real step, EMA on shards, DCP round trip."""
    import tempfile

    from torch.distributed.tensor import DTensor

    from pipelines.train.checkpoint import TrainState, load_checkpoint, save_checkpoint

    StageTrainer.report = staticmethod(lambda metrics, directory: None)

    config = config_for("small", overrides=["stage1.batch_size_per_worker=16", "model.dino_head.n_prototypes=4096",
                                           "model.ibot_head.n_prototypes=4096"])
    trainer = trainer_for(config)
    param = next(trainer.model.student.parameters())
    out["backend"] = dist.get_backend()
    out["param_type"] = type(param).__name__
    out["param_dtype"] = str(param.dtype)
    out["mp_param_dtype"] = str(mixed_precision(config.parallel, "cuda").param_dtype)
    data = torch.from_numpy(slices(64))
    batches = gpu_batches(config, "stage1", data)
    maker = trainer.batch_maker()
    teacher_before = {k: v.full_tensor().clone() for k, v in trainer.model.teacher.state_dict().items()
                      if isinstance(v, DTensor)}
    losses = [trainer.train_step(maker(next(batches)), trainer.first + i).loss for i in range(5)]
    out["losses"] = [float(x) for x in losses]
    out["finite"] = all(np.isfinite(out["losses"]))
    moved = [float((v.full_tensor() - teacher_before[k]).abs().max()) for k, v in trainer.model.teacher.state_dict().items()
             if k in teacher_before]
    out["ema_moved_teacher"] = max(moved) > 0
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(tmp, trainer.model, trainer.optimizer, TrainState(step=5))
        saved = {k: v.full_tensor().clone() for k, v in trainer.model.student.state_dict().items()}
        fresh = trainer_for(config)
        load_checkpoint(tmp, fresh.model, fresh.optimizer)
        worst = max(float((v.full_tensor() - saved[k]).abs().max()) for k, v in fresh.model.student.state_dict().items())
    out["dcp_roundtrip_max_abs_diff"] = worst
    out["ok"] = out["finite"] and out["ema_moved_teacher"] and worst == 0.0 and out["backend"] in ("nccl", "gloo")


THROUGHPUT_VARIANTS = (  # result key, where multi-crop runs, per-block torch.compile
    ("base224_gpu_aug", "worker", False),
    ("base224_gpu_aug_compiled", "worker", True),
    ("base224_cpu_aug", "ray_data", False),
)


def throughput(out: dict, steps: int, warmup: int) -> None:
    data = slices(512)
    for key, mode, compiled in THROUGHPUT_VARIANTS:
        if compiled and SMOKE:  # inductor on a CPU smoke run would only time the compiler
            continue
        config = config_for("base", augment_on=mode, overrides=[f"parallel.compile={str(compiled).lower()}"])
        trainer = trainer_for(config)
        if mode == "worker":  # raw slices already on the GPU; BatchMaker runs BatchedMultiCrop there
            source, prepare = gpu_batches(config, "stage1", torch.from_numpy(data)), trainer.batch_maker()
        else:  # MultiCropAugment in DataLoader workers; the collated batch is copied to the GPU
            workers = max(2, min(14, (os.cpu_count() or 4) - 2))
            source = iter(cpu_batches(config, "stage1", data, workers))
            out["cpu_aug_workers"] = workers

            def prepare(batch):
                return batch.to(DEVICE)
        out[key] = timed_steps(trainer, source, prepare, steps, warmup)
        del trainer, source
        empty_cache()
    config = config_for("base")
    flops = flops_per_sample(config)
    out["flops"] = flops
    peak = peak_for(device_name())
    out["peak_flops_bf16"] = peak
    for key, _, _ in THROUGHPUT_VARIANTS:
        if key in out:
            out[key]["mfu"] = flops["flops_per_sample"] * out[key]["images_per_s"] / peak


def memory(out: dict, steps: int) -> None:
    cases = [("base", "stage1"), ("base", "stage2"), ("large", "stage1")]  # large last: an OOM there ends nothing
    for size, stage in cases:
        empty_cache()
        name = f"{size}_{stage}"
        try:
            config = config_for(size, stage)
            trainer = trainer_for(config, stage)
            batches = gpu_batches(config, stage, torch.from_numpy(slices(128, 256 if stage == "stage1" else 512)))
            maker = trainer.batch_maker()
            for i in range(steps):
                trainer.train_step(maker(next(batches)), trainer.first + i)
            sync()
            out[name] = {"batch_per_gpu": config.stage(stage).batch_size_per_worker,
                         "crops": f"{config.stage(stage).crops.global_size}/{config.stage(stage).crops.local_size}",
                         "peak_allocated_gib": peak_gib("allocated"), "peak_reserved_gib": peak_gib("reserved")}
            del trainer
        except torch.cuda.OutOfMemoryError as err:
            out[name] = {"oom": str(err)[:300]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("check", choices=["sanity", "throughput", "memory"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global DEVICE
    if args.smoke:
        DEVICE = "cpu"
        SMOKE.extend(["model.vit.size=micro", *(f"model.{head}.{key}={value}" for head in ("dino_head", "ibot_head")
                                                for key, value in (("n_prototypes", 256), ("hidden_dim", 128),
                                                                   ("bottleneck_dim", 64))),
                      "stage1.batch_size_per_worker=4",
                      "stage2.batch_size_per_worker=2", "stage1.crops.global_size=64", "stage1.crops.local_size=32",
                      "stage2.crops.global_size=96", "stage2.crops.local_size=48"])
        dist.init_process_group("gloo")
    else:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl")
    torch.backends.cuda.matmul.allow_tf32 = True
    out = {"check": args.check, "device": device_name(), "torch": torch.__version__,
           "world_size": dist.get_world_size()}
    start = time.perf_counter()
    try:
        {"sanity": lambda: sanity(out), "throughput": lambda: throughput(out, args.steps, args.warmup),
         "memory": lambda: memory(out, 3)}[args.check]()
    except Exception as err:  # the JSON must say what failed
        out["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        out["seconds"] = time.perf_counter() - start
        Path(args.out).write_text(json.dumps(out, indent=1))
        print(json.dumps(out, indent=1))
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
