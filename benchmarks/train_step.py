"""Images/s and data-wait fraction of the pretraining step on CPU (one gloo rank, FSDP2, the tiny config).

    python benchmarks/train_step.py --out train_step.json [--manifest .local/ingest] [--steps 30]

The step is ``StageTrainer.train_step`` (multi-crop, student + teacher, AdamW, EMA) fed through
``worker_batches`` from a Ray Data stream, once with the batched augmentation in the worker
(``data.augment_on: worker``) and once with the CPU form inside Ray Data (``ray_data``). With
``--manifest`` the stream reads the ingested shards; without it, real ICBM152 2009c T1/T2 slices
(2 mm, 96 px, the demo's ingest settings) preprocessed in memory. The data-wait fraction is the share of
wall time the loop spent blocked on the next batch.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import time
from pathlib import Path

import torch
import torch.distributed as dist

from braindino.config import load_config
from pipelines.train.config import PretrainConfig
from pipelines.train.checkpoint import DataPosition
from pipelines.train.data import build_dataset, shard_index, with_augmentation, worker_batches
from pipelines.train.loop import StagePlan, StageTrainer
from pipelines.train.monitor import ThroughputWindow

REPO = Path(__file__).resolve().parents[1]


def memory_dataset(config: PretrainConfig):
    import ray.data

    from braindino.volumes import PreprocessSpec
    from infra.local.catalogue import slice_stack

    images = slice_stack(("icbm2009c_t1", "icbm2009c_t2"), PreprocessSpec(spacing=(2.0, 2.0, 2.0), slice_size=96))
    ds = ray.data.from_numpy(images).map_batches(lambda b: {"image": b["data"]}, batch_format="numpy")
    return ds.randomize_block_order()


def measure(config: PretrainConfig, dataset, steps: int, warmup: int) -> dict:
    spec = config.stage1
    trainer = StageTrainer(StagePlan(config, "stage1", run_id="", tracking_uri=""), torch.device("cpu"), 0, 1)
    batches = worker_batches(dataset.iterator(), config, spec, DataPosition())
    maker = trainer.batch_maker()
    for step in range(warmup):
        trainer.train_step(maker(next(batches)), step)
    window = ThroughputWindow(spec.batch_size_per_worker, trainer.tokens_per_image)
    start = time.perf_counter()
    for step in range(warmup, warmup + steps):
        waiting = time.perf_counter()
        raw = next(batches)
        window.add_step(time.perf_counter() - waiting)
        trainer.train_step(maker(raw), step)
    return {**window.read(), "step_s": (time.perf_counter() - start) / steps}


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs/pretrain/tiny-cpu.yaml"))
    parser.add_argument("--manifest", default="", help="an ingest output root; default: in-memory real slices")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=512 * 2**20)
    ray.data.DataContext.get_current().enable_progress_bars = False
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    results = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU only",
               "torch": torch.__version__, "config": args.config, "source": args.manifest or "in-memory ICBM152 slices"}
    for mode in ("worker", "ray_data"):
        config = load_config(PretrainConfig, args.config, [f"data.augment_on={mode}", "workers.num_workers=1",
                                                           "data.shuffle_buffer=64", "data.manifest=" + (args.manifest or "in-memory")])
        if args.manifest:
            dataset = build_dataset(shard_index(args.manifest, config.data.store), config, config.stage1)
        else:
            dataset = with_augmentation(memory_dataset(config), config, config.stage1)
        results[f"augment_on_{mode}"] = measure(config, dataset, args.steps, args.warmup)
        print(mode, json.dumps(results[f"augment_on_{mode}"]), flush=True)
    dist.destroy_process_group()
    ray.shutdown()
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
