"""The one way every job reads its configuration: ``--config FILE`` plus repeated ``--set key=value``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, TypeVar

from braindino.config import ConfigError, load_config

T = TypeVar("T")


def job_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", help="YAML file for this job (defaults are used without it)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set train.batch_size=64 (repeatable)")
    return parser


def load_job_config(config_cls: type[T], args: argparse.Namespace, extra: list[str] = ()) -> T:
    """The job's typed config, or exit with the ConfigError's message (it names the file and key)."""
    try:
        return load_config(config_cls, args.config, [*extra, *args.overrides])
    except ConfigError as err:
        sys.exit(f"config error: {err}")


def run_job(prog: str, description: str, config_cls: type[T], run: Callable[[T], object], argv=None) -> None:
    """Parse ``argv`` for a job that needs no arguments beyond --config/--set, then run it."""
    args = job_parser(prog, description).parse_args(argv)
    run(load_job_config(config_cls, args))


def connect_ray(num_cpus: int | None = None) -> None:
    """Attach to the cluster in RAY_ADDRESS (``ray job submit`` sets it), else start a local Ray.

    Under a cluster no resource arguments are passed (platform notes F6). A RAY_ADDRESS that is a
    dashboard URL (what job clients use, e.g. the demo's head) is not a driver address: the driver
    then attaches to the cluster running on this machine.
    """
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS", "")
    if address.startswith(("http://", "https://")):
        os.environ.pop("RAY_ADDRESS")
        try:
            ray.init(address="auto")
        finally:
            os.environ["RAY_ADDRESS"] = address
    elif address:
        ray.init()
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, configure_logging=False)
