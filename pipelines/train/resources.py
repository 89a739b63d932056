"""How a pretraining run shares the cluster between the Ray Train workers and the Ray Data stream.

The workers hold ``workers.num_workers x workers.cpus_per_worker`` CPUs for a whole stage and Ray Data
gets what is left. The stream only starts when one task of each of its stages can run at once: a read
task waiting for a CPU that the workers and the augmentation actor already hold is a silent hang.
``plan_data_resources`` sizes the stages so that one read task (fused with decode) and one
augmentation actor always fit in what is left, or refuses with what is short and what to change.

A cluster that autoscales is judged by the most it can grow to; the stages are sized by what it has
now (the workers' demand makes the autoscaler add nodes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipelines.train.config import PretrainConfig


class ClusterTooSmall(RuntimeError):
    """The cluster cannot hold the training workers and one task of each stream stage at once."""


@dataclass(frozen=True)
class DataResources:
    """CPUs per Ray Data task or actor of the training stream."""

    read_cpus: float = 1.0  # per read task; decoding runs fused in the same task
    augment_cpus: float = 1.0  # per CPU multi-crop actor (``data.augment_on: ray_data``)
    augment_actors: tuple[int, int] = (1, 1)  # the actor pool may grow from the first to the second


def plan_data_resources(config: PretrainConfig, cluster: dict[str, float],
                        capacity: dict[str, float] | None = None) -> DataResources:
    """Size the stream's stages for ``cluster`` (``ray.cluster_resources()``).

    ``capacity`` is the most an autoscaling cluster can grow to (``None``: it has a fixed size).
    Raises ``ClusterTooSmall`` naming what is short and the setting to change.
    """
    workers = config.workers
    held = workers.num_workers * workers.cpus_per_worker
    stages = 2 if config.data.augment_on == "ray_data" else 1

    def most(resource: str) -> float:
        return max(cluster.get(resource, 0.0), (capacity or {}).get(resource, 0.0))

    size = f"{most('CPU'):g} CPUs" + (" at most, autoscaling included" if capacity else "")
    if workers.use_gpu and most("GPU") < workers.num_workers:
        raise ClusterTooSmall(
            f"workers.num_workers={workers.num_workers} with workers.use_gpu needs one GPU each; the cluster has "
            f"{most('GPU'):g}{' at most' if capacity else ''}: lower workers.num_workers, set workers.use_gpu=false "
            "or add GPU nodes")
    if most("CPU") - held <= 0:
        fitting = most("CPU") / 2 / workers.num_workers
        raise ClusterTooSmall(
            f"the {workers.num_workers} training workers hold {workers.num_workers} x {workers.cpus_per_worker:g} = "
            f"{held:g} CPUs (workers.num_workers x workers.cpus_per_worker) of the cluster's {size}, leaving none "
            "for the Ray Data stream that feeds them (read + decode"
            f"{', augment (data.augment_on: ray_data)' if stages == 2 else ''}): set workers.cpus_per_worker to at "
            f"most {fitting:g} (half the CPUs to the stream), lower workers.num_workers, or add CPUs")
    spare = cluster.get("CPU", 0.0) - held
    if spare <= 0:  # an autoscaling cluster that has yet to add the workers' nodes
        spare = most("CPU") - held
    share = min(1.0, spare / stages)
    if stages == 1:
        return DataResources(read_cpus=share, augment_cpus=0.0, augment_actors=(0, 0))
    return DataResources(read_cpus=share, augment_cpus=share,
                         augment_actors=(1, max(1, math.floor(spare / 2 / share))))


def autoscaling_capacity() -> dict[str, float] | None:
    """The most resources the connected cluster's autoscaler may provide, or ``None`` for a fixed cluster."""
    from ray._private.state import state  # the autoscaler's cluster config, as Ray Data reads it

    try:
        capacity = state.get_max_resources_from_cluster_config()
    except Exception:  # no autoscaler config published (a local Ray): the cluster has a fixed size
        return None
    return {key: float(value) for key, value in capacity.items()} if capacity else None
