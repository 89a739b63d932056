"""Ray nodes on this machine, each one ``ray start`` with its own temp dir, free ports and resources.

A head alone is the target of ``ray job submit`` in the demo and the tests; a head plus workers is a
multi-node cluster on one machine (the same commands as on VMs, see infra/README.md). Token auth is
disabled on these loopback-only nodes so clients need no token. ``stop`` ends only the node's own
processes (those naming its temp dir), never ``ray stop``, which would end every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from infra.local.services import free_port


class LocalRayNode:
    """A worker node joining ``head_address``; ``start`` it, ``stop`` (kill) it."""

    PORT_FLAGS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                  "metrics-export-port", "node-manager-port", "object-manager-port")

    def __init__(self, head_address: str, num_cpus: int = 2, object_store_mb: int = 512,
                 resources: dict[str, float] | None = None):
        self.head_address = head_address
        self.num_cpus = num_cpus
        self.object_store_mb = object_store_mb
        self.resources = resources or {}
        self.temp_dir = Path(tempfile.mkdtemp(prefix="bd-ray-"))  # short: Ray's socket paths have a length limit

    def start_args(self) -> list[str]:
        return [f"--address={self.head_address}", *self.node_args()]

    def node_args(self) -> list[str]:
        return [f"--num-cpus={self.num_cpus}", "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp_dir}",
                f"--object-store-memory={self.object_store_mb * 2**20}", f"--resources={json.dumps(self.resources)}",
                "--disable-usage-stats", *(f"--{flag}={free_port()}" for flag in self.PORT_FLAGS)]

    def start(self, attempts: int = 3) -> None:
        """``ray start`` this node. Ray gives a raylet a fixed 30 s to register with the GCS, which a loaded
        machine can miss: a failed start is killed and tried again, on fresh ports."""
        ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
        # Ray's own helpers that look a cluster up (the state API in Ray Train's placement-group cleaner)
        # take RAY_ADDRESS, else the machine's last `ray start`: every process of this node names its own.
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": self.head_address}
        for attempt in range(1, attempts + 1):
            done = subprocess.run([ray, "start", *self.start_args()], env=env, capture_output=True, text=True)
            if done.returncode == 0:
                return
            self._kill()
            if attempt == attempts:
                raise RuntimeError(f"`ray start` failed {attempts} times; last: {done.stderr.strip()[-2000:]}")

    def stop(self) -> None:
        """End every process of this node, then remove its temp dir."""
        self._kill()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _kill(self) -> None:
        """SIGTERM, then SIGKILL, every process of this node."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            if pids:
                time.sleep(3)

    def pids(self) -> list[int]:
        """The processes whose command line names this node's temp dir (raylet, agents, workers, ...)."""
        mark = str(self.temp_dir).encode()
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and int(proc.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if mark in (proc / "cmdline").read_bytes():
                        found.append(int(proc.name))
        return sorted(found)


class LocalRayHead(LocalRayNode):
    """A ``ray start --head`` with the dashboard (the job API) on loopback."""

    def __init__(self, num_cpus: int = 4, object_store_mb: int = 512, resources: dict[str, float] | None = None):
        self.port = free_port()
        self.dashboard_port = free_port()
        super().__init__(self.address, num_cpus, object_store_mb, resources)

    @property
    def address(self) -> str:
        """The GCS address drivers and worker nodes join (``RAY_ADDRESS`` of a driver run on this machine)."""
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start_args(self) -> list[str]:
        return ["--head", f"--port={self.port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={free_port()}", *self.node_args()]

    def start(self) -> str:
        super().start()
        return self.dashboard_url


class LocalRayCluster:
    """A head and worker nodes on this machine. Each node carries a resource named after it (``head``,
    ``node2``, ...) so work can be pinned to a node and a node can be told apart in Ray's state."""

    def __init__(self, head_cpus: int = 2, worker_cpus: tuple[int, ...] = (2,), object_store_mb: int = 512):
        self.head = LocalRayHead(head_cpus, object_store_mb, {"head": 1})
        self.workers = [LocalRayNode(self.head.address, cpus, object_store_mb, {f"node{i}": 1})
                        for i, cpus in enumerate(worker_cpus, start=2)]

    def start(self) -> str:
        self.head.start()
        for worker in self.workers:
            worker.start()
        return self.head.dashboard_url

    def stop(self) -> None:
        for node in [*self.workers, self.head]:
            node.stop()


@contextlib.contextmanager
def local_ray_head(num_cpus: int = 4) -> Iterator[str]:
    """A Ray head for ``ray job submit`` while the block runs; yields its dashboard (job API) URL."""
    head = LocalRayHead(num_cpus=num_cpus)
    try:
        yield head.start()
    finally:
        head.stop()
