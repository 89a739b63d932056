#!/usr/bin/env bash
# One H100/H200, < 10 minutes: FSDP2/NCCL/bf16 sanity at world size 1, then base@224 throughput and MFU
# (GPU vs CPU multi-crop), then peak memory of base and large at the default batch.
#   OUT=/path/for/json bash benchmarks/gpu/run.sh        (PYTHON=... to pick the interpreter)
# Writes $OUT/sanity.json, $OUT/throughput.json, $OUT/memory.json and $OUT/summary.json.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/braindino-gpu}"
PYTHON="${PYTHON:-python}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=1 TORCH_NCCL_ASYNC_ERROR_HANDLING=1

"$PYTHON" - <<'PY' || { echo "no CUDA device: this script needs one GPU" >&2; exit 2; }
import torch
assert torch.cuda.is_available()
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| nccl", torch.cuda.nccl.version())
PY

status=0
check() {  # check NAME SECONDS [extra args]
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=1 \
    benchmarks/gpu/bench.py "$name" --out "$OUT/$name.json" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc after $((SECONDS - start)) s (log: $OUT/$name.log)"
  [ $rc -eq 0 ] || { status=1; tail -20 "$OUT/$name.log"; }
}
check sanity 100
check throughput 330 --steps 20 --warmup 5
check memory 140

"$PYTHON" - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
summary = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.stem != "summary"}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
t = summary.get("throughput", {})
for key in ("base224_gpu_aug", "base224_gpu_aug_compiled", "base224_cpu_aug"):
    if key in t:
        r = t[key]
        print(f"{key}: {r['images_per_s']:.0f} images/s, MFU {100 * r.get('mfu', 0):.1f}%, data wait {100 * r['data_wait_fraction']:.1f}%")
for key, r in summary.get("memory", {}).items():
    if isinstance(r, dict) and "peak_allocated_gib" in r:
        print(f"{key}: peak {r['peak_allocated_gib']:.1f} GiB allocated at batch {r['batch_per_gpu']}")
print("sanity ok:", summary.get("sanity", {}).get("ok"))
PY
exit $status
