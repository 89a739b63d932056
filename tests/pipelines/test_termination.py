"""A killed driver takes the local Ray it started with it.

The driver is a real one (``entry`` around ``connect_ray``, blocked in ``ray.get`` as a job is), run as a
subprocess; its Ray processes are found in /proc as its descendants, and only they are watched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DRIVER = """
import time
from pipelines.failures import entry
from pipelines.jobs import connect_ray

def main(argv):
    connect_ray(1)
    import ray

    @ray.remote(num_cpus=0.5)
    def long_task():
        time.sleep(600)

    ray.get(long_task.remote())

entry(main)
"""


def processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, command line) for every process readable in /proc."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            command = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        state, parent = stat[stat.rindex(")") + 2:].split()[:2]
        table[int(name)] = (int(parent), state, command)
    return table


def descendants(root: int) -> dict[int, str]:
    """The live processes below ``root``: pid -> command line."""
    table, found, grew = processes(), {root}, True
    while grew:
        below = {pid for pid, (parent, _, _) in table.items() if parent in found} - found
        found |= below
        grew = bool(below)
    return {pid: table[pid][2] for pid in found - {root} if table[pid][1] != "Z"}


def still_running(started: dict[int, str]) -> dict[int, str]:
    """Those of ``started`` still alive (the same pid with the same command line, not a zombie)."""
    table = processes()
    return {pid: command for pid, command in started.items()
            if pid in table and table[pid][1] != "Z" and table[pid][2] == command}


def wait_until(condition, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.5)
    return condition()


def kind(command: str) -> str:
    for name in ("raylet", "gcs_server", "DashboardAgent", "RuntimeEnvAgent", "long_task"):
        if name in command:
            return name
    return "other"


def ray_is_up(tree: dict[int, str]) -> dict[int, str] | None:
    """``tree`` once it holds a raylet, a GCS and the running task, else None."""
    return tree if {"raylet", "gcs_server", "long_task"} <= {kind(command) for command in tree.values()} else None


@pytest.mark.timeout(240)
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_killed_driver_takes_its_local_ray_with_it(how, tmp_path):
    env = {**os.environ, "BRAINDINO_LOG_DIR": str(tmp_path / "logs")}
    env.pop("RAY_ADDRESS", None)
    stderr = tmp_path / "stderr"
    with stderr.open("w") as sink:
        driver = subprocess.Popen([sys.executable, "-c", DRIVER], cwd=REPO, env=env, stdout=sink, stderr=sink)
    started: dict[int, str] = {}
    try:
        started = wait_until(lambda: ray_is_up(descendants(driver.pid)), 150)
        assert started, f"the driver's Ray did not come up (exit code {driver.poll()}): {stderr.read_text()[-2000:]}"
        driver.send_signal(how)
        driver.wait(timeout=60)
        err = stderr.read_text()
        if how == signal.SIGTERM:
            # Stopped as an interruption: the local Ray shut down in order, every process it started is gone.
            assert driver.returncode == 130 and err.splitlines()[-1] == "interrupted; stopped", err
            assert wait_until(lambda: not still_running(started), 30), f"still running: {still_running(started)}"
        else:
            # No cleanup can run: the kernel kills the GCS and raylet with their parent, the workers follow the
            # raylet. Ray's two agents stay until their report of the raylet's death to the (dead) GCS times
            # out, about a minute later; they then exit on their own.
            assert driver.returncode == -signal.SIGKILL
            agents = {"DashboardAgent", "RuntimeEnvAgent"}
            assert wait_until(lambda: not {kind(c) for c in still_running(started).values()} - agents, 30), \
                f"still running: {still_running(started)}"
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.wait()
        for pid in still_running(started or {}):
            os.kill(pid, signal.SIGKILL)  # only processes this test's driver started
