#!/usr/bin/env bash
# All GPU benchmarks in one time-boxed call (the device is lent for minutes, so everything runs at once):
#   - bench_cluster.py at ImageNet size (1,281,167 x 256, T=300) on the GPU;
#   - bench_baseline.py (k-means DeepCluster k=10/100/300) and bench_dcdp.py (DP variants) on full
#     Fashion-MNIST, all runs in parallel on the one GPU (each run gets 1 CPU thread for faiss / loading).
# The clustering benchmark runs first, alone (CLUSTER_BUDGET seconds), then all training runs together.
# Runs checkpoint every epoch; when BUDGET seconds are up the stragglers are stopped and the tables are
# built from the epochs that finished (each table says how many).
#
#   OUT=bench_out/gpu EPOCHS=30 BUDGET=360 bash experiments/bench_gpu.sh
# Needs Fashion-MNIST under data/fashion-mnist (or DATA_ROOT) and, where pip cannot reach an index,
# wheels for pyro-ppl / faiss-cpu in .whl/.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out/gpu}
EPOCHS=${EPOCHS:-30}
BUDGET=${BUDGET:-360}
CLUSTER_BUDGET=${CLUSTER_BUDGET:-120}
SUBSET=${SUBSET:-60000}
WIDTH=${WIDTH:-64}
DEVICE=${DEVICE:-cuda}
CLUSTER_N=${CLUSTER_N:-1281167}
DATA_ROOT=${DATA_ROOT:-data/fashion-mnist}
RUNS=${RUNS:-runs/gpu}
DP_VARIANTS=${DP_VARIANTS:-dp-default dp-soft dp-r1 dp-pca}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$RUNS"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; nproc; python3 -c \
  "import torch, faiss, pyro; print(torch.__version__, faiss.__version__, pyro.__version__)"; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
start=$(date +%s)

# The clustering benchmark runs alone first: its faiss baseline runs on the CPU cores the training runs need.
timeout "$CLUSTER_BUDGET" python3 experiments/bench_cluster.py --device "$DEVICE" --n "$CLUSTER_N" --skip sklearn,svi \
  --covariances diag --threads "$(nproc)" --out "$OUT/bench_cluster_gpu.md" > "$OUT/bench_cluster_gpu.log" 2>&1
echo "cluster bench: $(( $(date +%s) - start )) s" >> "$OUT/machine.txt"
timeout "$BUDGET" python3 experiments/bench_baseline.py --ks 10 100 300 --epochs "$EPOCHS" --subset "$SUBSET" \
  --width "$WIDTH" --jobs 3 --threads 2 --device "$DEVICE" --data-root "$DATA_ROOT" --out-dir "$RUNS" \
  > "$OUT/bench_baseline_gpu.log" 2>&1 &
baseline_pid=$!
timeout "$BUDGET" python3 experiments/bench_dcdp.py --variants $DP_VARIANTS --epochs "$EPOCHS" --subset "$SUBSET" \
  --width "$WIDTH" --jobs 6 --threads 2 --device "$DEVICE" --out-dir "$RUNS" --extra --data-root "$DATA_ROOT" \
  > "$OUT/bench_dcdp_gpu.log" 2>&1 &
dcdp_pid=$!
wait "$baseline_pid" "$dcdp_pid"
pkill -f experiments/run.py; sleep 3   # runs still going when the budget ran out
echo "wall: $(( $(date +%s) - start )) s" >> "$OUT/machine.txt"

python3 experiments/bench_baseline.py --table-only --ks 10 100 300 --epochs "$EPOCHS" --subset "$SUBSET" \
  --width "$WIDTH" --device "$DEVICE" --data-root "$DATA_ROOT" --out-dir "$RUNS" --markdown "$OUT/bench_baseline_gpu.md"
python3 experiments/bench_dcdp.py --table-only --no-anchors --variants km-k10 km-k100 $DP_VARIANTS --epochs "$EPOCHS" \
  --subset "$SUBSET" --width "$WIDTH" --device "$DEVICE" --out-dir "$RUNS" --markdown "$OUT/bench_dcdp_gpu.md"
tar czf "$OUT/runs.tar.gz" --exclude=last.pt --exclude=clusters "$RUNS"
ls -la "$OUT"
