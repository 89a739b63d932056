"""``braindino serve`` as a user runs it: a subprocess that starts its own local Ray, serves the registry's
champion until interrupted, answers a real scan over HTTP and speaks in its own voice from start to stop."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import threading

import pytest

from infra.local.services import free_port
from tests.conftest import real_scan
from tests.voice import BRAINDINO, assert_own_voice, set_flags

pytestmark = pytest.mark.timeout(600)


def follow(server: subprocess.Popen, printed: list[str], serving: threading.Event) -> None:
    """Collect the server's stdout; set ``serving`` once it says how to try it (the service is up)."""
    for line in server.stdout:
        printed.append(line)
        if line.endswith("(Ctrl-C stops)\n"):
            serving.set()


def test_the_command_serves_the_champion_until_interrupted_in_its_own_voice(registry, tmp_path):
    from serving.auth import TOKEN_ENV
    from serving.client import Client

    port, token = free_port(), secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_"))}
    env.update({TOKEN_ENV: token, "BRAINDINO_LOG_DIR": str(tmp_path / "logs")})
    command = [BRAINDINO, "serve", *set_flags([f"http.port={port}", f"encoder.tracking_uri={registry.mlflow.tracking_uri}",
                                               "ingress.slices_per_volume=8"])]
    stderr_file = tmp_path / "stderr.txt"
    with stderr_file.open("w") as stderr:
        server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    printed, serving = [], threading.Event()
    reader = threading.Thread(target=follow, args=(server, printed, serving), daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        assert serving.wait(timeout=300), "".join(printed)
        answer = Client(url, token).embed(real_scan("nibabel_anatomical").path)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=180)
        reader.join(timeout=30)
    done = subprocess.CompletedProcess(command, server.returncode, "".join(printed), stderr_file.read_text())
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    assert answer["encoder"]["version"] == registry.encoder_version and len(answer["embedding"]) == answer["dim"]
    lines, _ = assert_own_voice(done, "serve", tmp_path / "logs",
                                f"braindino serve: serve models:/braindino-encoder@champion on {url}", chatter=("ray",))
    assert f"[serve] try: braindino embed SCAN.nii.gz --url {url}   (Ctrl-C stops)" in lines
    assert lines.index("[serve] shutting down") < lines.index("summary:")
    assert f"  served  models:/braindino-encoder@champion at {url}/v1" in lines
