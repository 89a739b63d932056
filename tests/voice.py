"""What a command run with a terminal-less stdout must look like: its own lines, Ray and MLflow in its log."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ESCAPE = re.compile(r"\x1b\[|\r")
THIRD_PARTY = ("Token authentication", "WARNING", "UserWarning", " INFO ", "mlflow.store", "ray.data.", "Progress bars")
BRAINDINO = str(Path(sys.executable).parent / "braindino")  # the console script the project installs


def set_flags(values: list[str]) -> list[str]:
    """``--set VALUE`` for each of ``values``."""
    return [item for value in values for item in ("--set", value)]


def run_braindino(args: list[str], log_dir: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
                  timeout: float = 600) -> subprocess.CompletedProcess:
    """``braindino ARGS`` as a user runs it: a subprocess whose stdout is no terminal, its log under ``log_dir``
    (in this process's environment, or ``env``)."""
    environment = {**(os.environ if env is None else env), "BRAINDINO_LOG_DIR": str(log_dir)}
    return subprocess.run([BRAINDINO, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)


def assert_own_voice(done: subprocess.CompletedProcess, job: str, log_dir: Path, first_line: str,
                     chatter: tuple[str, ...] = ("ray", "mlflow")) -> tuple[list[str], str]:
    """The exact first line, a last line naming the log file, nothing from third parties on stdout or
    stderr, and the ``chatter`` of those libraries in that log. Returns stdout's lines and the log's text."""
    lines = done.stdout.splitlines()
    (log,) = log_dir.glob(f"{job}-*.log")
    assert lines[0] == first_line, done.stdout[:2000]
    assert re.fullmatch(rf"braindino {job}: done in \d+\.\d s; full log: {re.escape(str(log))}", lines[-1]), lines[-1]
    assert not ESCAPE.search(done.stdout + done.stderr)
    assert not [line for line in lines if any(marker in line for marker in THIRD_PARTY)], done.stdout
    assert done.stderr == ""
    logged = log.read_text()
    for library in chatter:
        assert re.search(rf" (INFO|WARNING) {library}[.:]", logged), (library, logged[-2000:])
    return lines, logged
