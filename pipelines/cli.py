"""``braindino``: one entry point whose subcommands are the platform's jobs."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module with main(argv), one-line summary). Modules load only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("pipelines.pretrain", "two-stage self-distillation on Ray Train (FSDP2), tracked in MLflow"),
    "register": ("pipelines.register", "export the EMA teacher to the MLflow registry; 'register promote' sets champion"),
    "demo": ("pipelines.demo", "run the whole platform end to end on local services and bundled real MRI"),
    "ingest": ("pipelines.ingestion", "raw scans in object storage -> zarr volumes, WebDataset shards and the manifest"),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="braindino",
        description="Build, track and serve the BrainDINO brain-MRI foundation model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<10} {summary}" for name, (_, summary) in COMMANDS.items())
        + "\n\nRun 'braindino COMMAND --help' for a command's options.",
    )
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parsed = parser.parse_args(argv[:1] if argv and argv[0] not in ("-h", "--help") else argv)
    module = importlib.import_module(COMMANDS[parsed.command][0])
    module.main(argv[1:])


if __name__ == "__main__":
    main()
