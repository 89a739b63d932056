"""Load on the Serve application: requests/s, p50/p95/p99 latency and 5xx at concurrency 1, 8 and 32,
with the encoder's batching on (``max_batch_size`` 8) and off (1).

Two rows per setting:
- ``http embed``: a second process posts a real 1 mm scan (ICBM152 2009c T1 as shipped, 193x229x193) to
  ``/v1/embed`` over loopback for ``--seconds``, from ``concurrency`` threads with keep-alive sessions;
- ``encoder handle``: this driver calls the encoder deployment's handle with that scan's slices, already
  decoded and preprocessed by the ingress's own code, from ``concurrency`` coroutines: no HTTP, no
  decoding, so the gap between the rows is what they cost.

The encoder is a randomly initialised ViT of ``--vit-size`` exported as a registered encoder is (the
weights' values do not change the cost) with the default preprocessing (1 mm, 256 px slices), unless
``--encoder`` names a registered one. Replicas get the configured resources: one ingress replica and one
encoder replica of one CPU each (``--gpu``: the encoder on one whole GPU). Usage:
    python benchmarks/serve_load.py --out serve_load.json [--seconds 20] [--vit-size micro] [--slices 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# Run as a script, this file's folder leads sys.path; the repository root must come first.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np

CONCURRENCY = (1, 8, 32)
BATCHING = {"on": 8, "off": 1}


def percentiles(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan")}
    p50, p95, p99 = np.percentile(np.asarray(latencies) * 1000, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99)}


def summary(results: list[tuple[int, float]], elapsed: float) -> dict[str, float]:
    """``results``: (HTTP status, seconds) per finished request."""
    ok = [seconds for status, seconds in results if status == 200]
    return {"requests": len(results), "requests_per_s": len(ok) / elapsed, **percentiles(ok),
            "status_5xx": sum(status >= 500 for status, _ in results),
            "status_other": sum(status != 200 and status < 500 for status, _ in results)}


def http_load(url: str, token: str, scan: Path, concurrency: int, seconds: float) -> dict[str, float]:
    """Run in the load process: post ``scan`` from ``concurrency`` threads until ``seconds`` have passed."""
    import requests

    raw = scan.read_bytes()
    results: list[tuple[int, float]] = []
    deadline = time.monotonic() + seconds
    start = time.monotonic()

    def worker() -> None:
        with requests.Session() as session:
            while time.monotonic() < deadline:
                began = time.monotonic()
                try:
                    status = session.post(f"{url}/v1/embed", files={"file": (scan.name, raw)},
                                          headers={"Authorization": f"Bearer {token}"}, timeout=600).status_code
                except requests.RequestException:
                    status = 599
                results.append((status, time.monotonic() - began))

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return summary(results, time.monotonic() - start)


async def handle_load(handle, call, concurrency: int, seconds: float) -> dict[str, float]:
    """Call the encoder handle from ``concurrency`` coroutines until ``seconds`` have passed."""
    results: list[tuple[int, float]] = []
    deadline = time.monotonic() + seconds
    start = time.monotonic()

    async def worker() -> None:
        while time.monotonic() < deadline:
            began = time.monotonic()
            try:
                await handle.encode_slices.remote(call)
                status = 200
            except Exception:  # noqa: BLE001 - counted as a server error
                status = 500
            results.append((status, time.monotonic() - began))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summary(results, time.monotonic() - start)


def random_export(folder: Path, size: str) -> str:
    """A randomly initialised encoder of ``size`` with the default preprocessing, as an export folder."""
    import torch

    from braindino.features import Encoder
    from braindino.models.vit import ViTConfig, VisionTransformer
    from braindino.volumes import PreprocessSpec

    torch.manual_seed(0)
    Encoder(VisionTransformer(ViTConfig(size=size))).save(folder / "encoder.safetensors")
    (folder / "preprocess.json").write_text(PreprocessSpec().to_json())
    return str(folder)


def run(args: argparse.Namespace) -> dict:
    import ray
    from ray import serve

    from infra.local.catalogue import entry
    from braindino.features import volume_input
    from braindino.volumes import PreprocessSpec
    from infra.local.services import free_port
    from serving.app import APP_NAME, build_app
    from serving.auth import TOKEN_ENV
    from serving.client import Client
    from serving.encoder import DEPLOYMENT, EncoderCall
    from serving.scans import decode_scan
    from serving.settings import EncoderSettings, IngressSettings

    scan = entry("icbm2009c_t1").path
    if scan is None:
        sys.exit(f"icbm2009c_t1 is not installed: {entry('icbm2009c_t1').install_hint}")
    token = os.environ.setdefault(TOKEN_ENV, secrets.token_urlsafe(24))  # Ray's workers inherit it
    workdir = Path(tempfile.mkdtemp(prefix="serve-load-"))
    model = args.encoder or random_export(workdir, args.vit_size)
    ray.init(address="local", num_cpus=args.cpus, num_gpus=1 if args.gpu else 0, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    ingress = IngressSettings(slices_per_volume=args.slices)
    rows = []
    for batching, max_batch_size in BATCHING.items():
        encoder = EncoderSettings(model=model, tracking_uri=args.tracking_uri, max_batch_size=max_batch_size,
                                  forward_batch_size=args.forward_batch_size)
        serve.run(build_app(encoder, ingress, encoder_options={"ray_actor_options": {"num_cpus": 1, "num_gpus": int(args.gpu)}},
                            ingress_options={"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}),
                  name=APP_NAME, route_prefix="/")
        client = Client(url, token)
        client.wait_ready()
        description = client.models()["encoder"]
        spec = PreprocessSpec.from_json(description["preprocess"])
        decoded = decode_scan(scan.name, scan.read_bytes(), spec, ingress.policy)
        call = EncoderCall(volume_input(decoded.volume, spec, args.slices).slices.numpy())
        handle = serve.get_deployment_handle(DEPLOYMENT, APP_NAME)
        client.embed(scan)  # warm-up
        for concurrency in CONCURRENCY:
            command = [sys.executable, __file__, "--load", url, "--concurrency", str(concurrency),
                       "--seconds", str(args.seconds)]
            loaded = subprocess.run(command, check=True, capture_output=True, text=True, env={**os.environ})
            rows.append({"path": "http embed", "batching": batching, "concurrency": concurrency,
                         **json.loads(loaded.stdout.strip().splitlines()[-1]), "load_1m": os.getloadavg()[0]})
            rows.append({"path": "encoder handle", "batching": batching, "concurrency": concurrency,
                         **asyncio.run(handle_load(handle, call, concurrency, args.seconds)), "load_1m": os.getloadavg()[0]})
            print(table(rows[-2:], header=not rows[:-2]), flush=True)
    serve.shutdown()
    ray.shutdown()
    return {"machine": machine(), "vit_size": args.vit_size if not args.encoder else args.encoder,
            "slices_per_volume": args.slices, "slice_size": spec.slice_size, "seconds": args.seconds,
            "scan": "icbm2009c_t1 (193x229x193, 1 mm)", "rows": rows}


def machine() -> dict[str, str]:
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": str(os.cpu_count()),
            "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}


def table(rows: list[dict], header: bool = True) -> str:
    lines = ["| path | batching | concurrency | requests/s | p50 ms | p95 ms | p99 ms | 5xx |",
             "|---|---|---|---|---|---|---|---|"] if header else []
    for r in rows:
        lines.append(f"| {r['path']} | {r['batching']} | {r['concurrency']} | {r['requests_per_s']:.2f} | "
                     f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['status_5xx']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="where to write the JSON results")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each measurement")
    parser.add_argument("--vit-size", default="micro", help="size of the random encoder (micro, tiny, small, base)")
    parser.add_argument("--encoder", default="", help="a registered encoder (models:/...) or export folder instead")
    parser.add_argument("--tracking-uri", default="", help="MLflow tracking URI for --encoder models:/...")
    parser.add_argument("--slices", type=int, default=64, help="slices per volume (the ingress setting)")
    parser.add_argument("--cpus", type=int, default=4, help="logical CPUs of the local Ray")
    parser.add_argument("--gpu", action="store_true", help="give the encoder one whole GPU")
    parser.add_argument("--forward-batch-size", type=int, default=64,
                        help="slices per forward pass (configs/serve: 64 on CPU, 1024 on a GPU)")
    parser.add_argument("--load", help=argparse.SUPPRESS)  # internal: run as the load process against this URL
    parser.add_argument("--concurrency", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        from infra.local.catalogue import entry
        from serving.auth import TOKEN_ENV

        print(json.dumps(http_load(args.load, os.environ[TOKEN_ENV], entry("icbm2009c_t1").path,
                                   args.concurrency, args.seconds)))
        return
    result = run(args)
    print(table(result["rows"]))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
