"""A throwaway PostgreSQL server on 127.0.0.1, for running the team MLflow server locally.

Debian's server binaries (the ``postgresql`` package; ``make test`` installs it when run as root)
with a data directory and a port of its own, so it never touches a system cluster. ``initdb``
refuses to run as root, so under root the server runs as the unprivileged ``postgres`` user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from infra.local.services import free_port

DEBIAN_BINARIES = Path("/usr/lib/postgresql")
SERVICE_USER = "postgres"  # created by Debian's postgresql-common
ROLE = "braindino"


def server_binaries() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``: Debian's newest version, else the PATH."""
    versions = sorted(DEBIAN_BINARIES.glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if versions:
        return versions[-1].parent
    if found := shutil.which("initdb"):
        return Path(found).parent
    raise FileNotFoundError("PostgreSQL's server binaries (initdb, pg_ctl) are not installed: `apt-get install "
                            "postgresql` (as root, `make test` does it)")


class LocalPostgres:
    """``start()`` a fresh cluster with one database, returns its SQLAlchemy URL; ``stop()`` ends it.

    Authentication is ``trust`` for connections from 127.0.0.1 only: a test database, never a server.
    """

    def __init__(self, database: str = "mlflow"):
        self.database = database
        self.port = free_port()
        self.bin = server_binaries()
        self.root = Path(tempfile.mkdtemp(prefix="braindino-pg-"))  # short: the socket path has a length limit
        self.data = self.root / "data"
        self._as_service_user = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> str:
        if self._as_service_user:
            shutil.chown(self.root, SERVICE_USER)
        self._run("initdb", "-D", str(self.data), "-U", ROLE, "--auth=trust", "--encoding=UTF8", "--no-instructions")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options, "-w", "-t", "60",
                  "start")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", ROLE, self.database)
        return self.url

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        log = self.root / "server.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self._as_service_user:
            command = ["runuser", "-u", SERVICE_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}\n"
                               f"{self.log_tail()}")
