"""The ``braindino`` command: one entry point whose subcommands are the platform's jobs."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys

from pipelines.failures import entry

# name -> ("module" with main(argv), or "module:function", one-line summary). Modules load only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("pipelines.pretrain", "two-stage self-distillation on Ray Train (FSDP2), tracked in MLflow"),
    "register": ("pipelines.register", "export the EMA teacher to the MLflow registry; 'register promote' sets champion"),
    "demo": ("pipelines.demo", "run the whole platform end to end on local services and bundled real MRI"),
    "ingest": ("pipelines.ingestion", "raw scans in object storage -> zarr volumes, WebDataset shards and the manifest"),
    "evaluate": ("pipelines.evaluate", "frozen encoder + light heads on a task suite against baselines; registers the heads"),
    "serve": ("serving.launch", "serve the registered encoder and heads over HTTP (Ray Serve) until interrupted"),
    "embed": ("serving.client:embed_main", "send a scan to a running service: its embedding, as JSON"),
    "predict": ("serving.client:predict_main", "send a scan to a running service: a task head's prediction, as JSON"),
    "segment": ("serving.client:segment_main", "send a scan to a running service: a task head's label volume (NIfTI)"),
    "status": ("pipelines.status", "what an output root and MLflow hold: manifest counts, quarantine, last runs, models"),
}


EXAMPLES = """examples:
  braindino demo --config configs/demo.yaml
  braindino ingest --config configs/ingest.yaml --dataset configs/datasets/icbm152.yaml
  braindino pretrain --config configs/pretrain/tiny-cpu.yaml --verbose"""


def version() -> str:
    try:
        return importlib.metadata.version("braindino")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="braindino",
        description="Build, track and serve the BrainDINO brain-MRI foundation model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<10} {summary}" for name, (_, summary) in COMMANDS.items())
        + f"\n\n{EXAMPLES}\n\nRun 'braindino COMMAND --help' for a command's options and examples; every job "
        "takes --verbose to show Ray and MLflow output live (it always goes to the log file named in the summary).",
    )
    parser.add_argument("--version", action="version", version=f"braindino {version()}")
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parsed = parser.parse_args(argv[:1] if argv and not argv[0].startswith("-") else argv)
    module, _, function = COMMANDS[parsed.command][0].partition(":")
    entry(getattr(importlib.import_module(module), function or "main"), argv[1:])


if __name__ == "__main__":
    main()
