"""The one way every job reads its configuration: ``--config FILE`` plus repeated ``--set key=value``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, TypeVar

import yaml

from braindino.config import load_config, to_dict
from pipelines.console import console, route_library_logs, route_worker_output
from pipelines.failures import UserFacingError, reclaim_sigterm

T = TypeVar("T")


def job_parser(prog: str, description: str, examples: str = "") -> argparse.ArgumentParser:
    """The parser every job shares; ``examples`` (one command per line) is shown under ``--help``."""
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"examples:\n{examples}" if examples else None)
    parser.add_argument("--config", help="YAML file for this job (defaults are used without it)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key by its dotted path, e.g. --set section.key=value (repeatable)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (every key, defaults included, secrets redacted) as YAML and exit")
    parser.add_argument("--verbose", action="store_true",
                        help="also show Ray, Ray Data and MLflow output live on stderr (it always goes to the log file)")
    return parser


def load_job_config(config_cls: type[T], args: argparse.Namespace, extra: list[str] = ()) -> T:
    """The job's typed config (a ``ConfigError`` names the file and key at fault).

    With ``--print-config`` print it as YAML (loadable with ``--config``) and exit instead.
    """
    config = load_config(config_cls, args.config, [*extra, *args.overrides])
    if args.print_config:
        print(yaml.safe_dump(json.loads(json.dumps(to_dict(config), default=str)), sort_keys=False), end="")
        sys.exit(0)
    return config


def run_job(prog: str, description: str, config_cls: type[T], run: Callable[[T], object], argv=None,
            examples: str = "") -> None:
    """Parse ``argv`` for a job that needs no arguments beyond --config/--set/--verbose, then run it."""
    from pipelines.console import open_console

    args = job_parser(prog, description, examples).parse_args(argv)
    config = load_job_config(config_cls, args)
    open_console(prog.split()[-1], args.verbose)
    run(config)


def connect_ray(num_cpus: int | None = None) -> None:
    """Attach to the cluster in RAY_ADDRESS (``ray job submit`` sets it), else start a local Ray.

    Under a cluster no resource arguments are passed (Ray refuses them when attaching). A RAY_ADDRESS
    that is an ``http(s)://`` job-API URL is not a driver address: such a driver must be submitted as a job.
    """
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS", "")
    if address.startswith(("http://", "https://")):
        raise UserFacingError(f"RAY_ADDRESS={address} is a Ray job API, not a driver address: submit this driver with "
                              f"'ray job submit --address {address} --working-dir . -- python pipelines/JOB.py ...', "
                              "or unset RAY_ADDRESS to run on a local Ray")
    if address:
        require_answering(address)
        ray.init(configure_logging=False)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, configure_logging=False)
    reclaim_sigterm()
    if console().log_path:  # a command's console is open: Ray's output belongs in its log
        route_library_logs()
        route_worker_output()


def require_answering(address: str, timeout_s: float = 5.0) -> None:
    """Fail at once, in one line, when RAY_ADDRESS names a ``host:port`` where nothing listens: ``ray.init``
    would wait minutes for that GCS. ``auto`` and ``ray://`` addresses are left to Ray."""
    import socket

    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise UserFacingError(f"no Ray cluster answers at RAY_ADDRESS={address} ({err.strerror or err}): start the "
                              "cluster (ray start --head), or unset RAY_ADDRESS to run on a local Ray") from None


JOB_EXCLUDES = [".git", ".venv", ".local", ".pytest_cache", "*.egg-info"]


def submit_job(address: str, script: str, args: list[str]) -> None:
    """``ray job submit`` ``python pipelines/<script> ARGS`` to the cluster whose job API is ``address``.

    The repository (less ``JOB_EXCLUDES``) is the job's working directory. It carries no ``.git``, so
    the repository's commit and whether its tree is dirty travel as environment variables
    (``pipelines.tracking.revision_env``) and every MLflow run the job opens names them. Otherwise the
    job runs with the cluster's environment, not this process's: secrets such as storage credentials
    and the pseudonym key belong to the cluster. On a head on this machine the job runs with this
    interpreter, on a remote one with the image's ``python``. Raises ``CalledProcessError`` when the job fails.
    """
    import subprocess
    from pathlib import Path
    from urllib.parse import urlparse

    from pipelines.tracking import revision_env

    repo = Path(__file__).resolve().parents[1]
    ray = Path(sys.executable).parent / "ray"
    python = sys.executable if urlparse(address).hostname in ("127.0.0.1", "localhost", "::1") else "python"
    runtime_env = {"excludes": JOB_EXCLUDES, "env_vars": revision_env(repo)}
    color = "true" if console().out.isatty() else "false"  # Ray's "auto" colours output into files too
    command = [str(ray) if ray.exists() else "ray", "job", "submit", "--address", address, "--log-color", color,
               "--working-dir", str(repo), "--runtime-env-json", json.dumps(runtime_env), "--",
               python, f"pipelines/{script}", *args]
    console().say(f"[submit] ray job submit --address {address} -- python pipelines/{script} {' '.join(args[:2])} ...")
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    # The job's output (its driver's own lines; Ray's are in the driver's log file) is this command's output.
    subprocess.run(command, check=True, env=env, stdout=console().out)
