"""The one way every job reads its configuration: ``--config FILE`` plus repeated ``--set key=value``."""

from __future__ import annotations

import argparse
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
