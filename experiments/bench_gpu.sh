#!/usr/bin/env bash
# All GPU benchmarks in one time-boxed call (the device is lent for minutes, so everything runs at once):
#   - bench_cluster.py at ImageNet size (1,281,167 x 256, T=300) on the GPU;
#   - bench_baseline.py (k-means DeepCluster k=10/100/300) and bench_dcdp.py (DP variants) on full
#     Fashion-MNIST, all runs in parallel on the one GPU (each run gets 1 CPU thread for faiss / loading).
# Runs checkpoint every epoch; when BUDGET seconds are up the stragglers are stopped and the tables are
# built from the epochs that finished (each table says how many).
#
#   OUT=bench_out/gpu EPOCHS=30 BUDGET=400 bash experiments/bench_gpu.sh
# Needs Fashion-MNIST under data/fashion-mnist (or DATA_ROOT) and, where pip cannot reach an index,
# wheels for pyro-ppl / faiss-cpu in .whl/.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out/gpu}
EPOCHS=${EPOCHS:-30}
BUDGET=${BUDGET:-400}
SUBSET=${SUBSET:-60000}
WIDTH=${WIDTH:-64}
DEVICE=${DEVICE:-cuda}
CLUSTER_N=${CLUSTER_N:-1281167}
DATA_ROOT=${DATA_ROOT:-data/fashion-mnist}
RUNS=${RUNS:-runs/gpu}
DP_VARIANTS=${DP_VARIANTS:-dp-hard-init-r1 dp-soft-init-r1 dp-multilabel-init-r1 dp-soft-prior-r1 dp-soft-init-r3 dp-soft-init-ra}
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

python3 experiments/bench_cluster.py --device "$DEVICE" --n "$CLUSTER_N" --skip sklearn,svi \
  --out "$OUT/bench_cluster_gpu.md" > "$OUT/bench_cluster_gpu.log" 2>&1 &
cluster_pid=$!
timeout "$BUDGET" python3 experiments/bench_baseline.py --ks 10 100 300 --epochs "$EPOCHS" --subset "$SUBSET" \
  --width "$WIDTH" --jobs 3 --threads 1 --device "$DEVICE" --data-root "$DATA_ROOT" --out-dir "$RUNS" \
  > "$OUT/bench_baseline_gpu.log" 2>&1 &
timeout "$BUDGET" python3 experiments/bench_dcdp.py --variants $DP_VARIANTS --epochs "$EPOCHS" --subset "$SUBSET" \
  --width "$WIDTH" --jobs 6 --threads 1 --device "$DEVICE" --out-dir "$RUNS" --extra --data-root "$DATA_ROOT" \
  > "$OUT/bench_dcdp_gpu.log" 2>&1 &
sleep "$BUDGET"
pkill -f experiments/run.py; sleep 3
wait "$cluster_pid" 2>/dev/null
echo "wall: $(( $(date +%s) - start )) s" >> "$OUT/machine.txt"

python3 experiments/bench_baseline.py --table-only --ks 10 100 300 --epochs "$EPOCHS" --subset "$SUBSET" \
  --width "$WIDTH" --device "$DEVICE" --data-root "$DATA_ROOT" --out-dir "$RUNS" --markdown "$OUT/bench_baseline_gpu.md"
python3 experiments/bench_dcdp.py --table-only --variants km-k10 km-k100 $DP_VARIANTS --epochs "$EPOCHS" \
  --subset "$SUBSET" --width "$WIDTH" --device "$DEVICE" --out-dir "$RUNS" --markdown "$OUT/bench_dcdp_gpu.md"
tar czf "$OUT/runs.tar.gz" --exclude=last.pt --exclude=clusters "$RUNS"
ls -la "$OUT"
