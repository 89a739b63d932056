"""``ray job submit`` of the tiny config against a local ``ray start --head``: both stages, then the registry.

This file runs last in the session (see ``conftest.pytest_collection_modifyitems``). Its head uses free
ports and is stopped by killing the processes that carry its GCS address, never with ``ray stop``
(which would end every Ray on the machine: the session's and anyone else's).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from infra.local.services import LocalRayHead

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class IsolatedRayHead(LocalRayHead):
    """A ``ray start --head`` whose every port is free, stopped by the PIDs that name its GCS address."""

    def __init__(self, num_cpus: int = 4):
        super().__init__(num_cpus=num_cpus, port=_free_port(), dashboard_port=_free_port(), object_store_mb=512)

    def start(self) -> str:
        ports = {name: _free_port() for name in ("ray-client-server-port", "dashboard-agent-listen-port",
                                                  "dashboard-agent-grpc-port", "runtime-env-agent-port",
                                                  "metrics-export-port", "node-manager-port", "object-manager-port")}
        self._ray(
            "start", "--head", f"--num-cpus={self.num_cpus}", "--node-ip-address=127.0.0.1", f"--port={self.port}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--object-store-memory={self.object_store_mb * 2**20}", "--disable-usage-stats",
            *(f"--{name}={port}" for name, port in ports.items()),
        )
        return self.dashboard_url

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, every process naming this head's GCS port or its session directory."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self._pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(3)

    def _pids(self) -> list[int]:
        cmdlines = {}
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and int(proc.name) != os.getpid():
                try:
                    cmdlines[int(proc.name)] = (proc / "cmdline").read_bytes()
                except OSError:
                    continue
        port = re.compile(rb"[:=]%d(\x00|$)" % self.port)
        ours = {pid for pid, cmd in cmdlines.items() if port.search(cmd)}
        sessions = {m.group(0) for pid in ours for m in re.finditer(rb"/tmp/ray/session_[\w.-]+", cmdlines[pid])}
        sessions.discard(b"/tmp/ray/session_latest")
        ours |= {pid for pid, cmd in cmdlines.items() if any(session in cmd for session in sessions)}
        return sorted(ours)

    def _ray(self, *args: str) -> None:
        ray = Path(sys.executable).parent / "ray"
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_raylet_start_wait_time_s": "120"}
        env.pop("RAY_ADDRESS", None)
        subprocess.run([str(ray), *args], check=True, env=env, stdout=subprocess.DEVNULL)


def test_ray_job_submit_trains_both_stages_and_registers_the_encoder(tmp_path, tiny_overrides, object_store, capfd):
    from pipelines.pretrain import submit

    overrides = [*tiny_overrides(tmp_path), "stage1.iterations=12", "stage2.iterations=4", "checkpoint.every=6",
                 "eval.every=6", "data.augment_on=worker",  # the other tests cover ray_data
                 "checkpoint.storage_path=s3://pretrain-data/job-submit/ray_results"]  # checkpoints in object storage
    uri = next(o.split("=", 1)[1] for o in overrides if o.startswith("tracking.tracking_uri="))
    head = IsolatedRayHead()
    try:
        address = head.start()
        run_id = submit(address, "configs/pretrain/tiny-cpu.yaml", overrides, uri, name="job-submit")
    finally:
        head.stop()
    output = capfd.readouterr().out
    assert "succeeded" in output and "[pretrain] registered braindino-encoder version" in output, output[-4000:]
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["data.augment_on"] == "worker"
    history = client.get_metric_history(run_id, "loss_total")
    assert max(m.step for m in history) == 12 + 4 - 1
    version = client.get_model_version_by_alias("braindino-encoder", "candidate")
    assert version.run_id == run_id
    stage2 = run.data.tags["checkpoint.stage2"]
    assert stage2.startswith("pretrain-data/job-submit/ray_results/job-submit-stage2/checkpoint_")
    listed = object_store.boto3_client().list_objects_v2(Bucket="pretrain-data", Prefix=stage2.split("/", 1)[1])
    names = {item["Key"].rsplit("/", 1)[-1] for item in listed.get("Contents", [])}
    assert {".metadata", "__0_0.distcp", "__1_0.distcp", "train_state.json"} <= names
