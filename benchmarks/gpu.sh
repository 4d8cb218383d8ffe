#!/usr/bin/env bash
# One-shot GPU measurements for docs/PERFORMANCE.md, in one go, needing nothing from the internet:
# correctness checks on the device, training frames/s at the paper's widths (eager float32, bf16 +
# channels-last, the step as one CUDA graph, compiled) beside the floor and the naive model, the data generator alone against
# the training rate, a real `indpred train` run on the GPU, and peak memory per frame.
#
#   bash benchmarks/gpu.sh                 # on a machine with a CUDA GPU and torch
#   DEVICE=cpu SMOKE=1 bash benchmarks/gpu.sh    # a quick run of every step on the CPU (tiny sizes)
#   ONLY="check bf16 train" bash benchmarks/gpu.sh  # some steps only (tags: see ONLY below)
#
# Results go to $OUT (gpu.log, results.jsonl, train_metrics.jsonl, train_summary.json) when it is
# set, else to a temporary folder; the log is printed too. Each step has a time limit and the
# whole script a budget (BUDGET seconds, default 420), most important steps first. Python packages
# that torch's image may lack (PyAV, mlxtend) are installed from wheels in .whl/ when present.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-420}
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
LOG="$OUT/gpu.log"
JSON="$OUT/results.jsonl"
export PYTHONUNBUFFERED=1
if [ -n "${SMOKE:-}" ]; then  # tiny sizes: every step runs, nothing is measured
    B_BIG=2; B_HUGE=2; B_SMALL=2; ROUNDS="--rounds 1 --warmup 0 --steps-per-round 1"
    TRAIN_STEPS=4; GRAPH_STEPS=6; MEM_SHAPES=2x3; MEM_LONG=1x5; DATA_STEPS=3; KSG_N=2000
else
    B_BIG=256; B_HUGE=512; B_SMALL=32; ROUNDS="--rounds 5 --warmup 2 --steps-per-round 5"
    TRAIN_STEPS=120; GRAPH_STEPS=600; MEM_SHAPES=32x10,64x10; MEM_LONG=8x100; DATA_STEPS=40; KSG_N=50000
fi

exec > >(tee -a "$LOG") 2>&1

if ls .whl/*.whl >/dev/null 2>&1 && ! "$PY" -c "import av, mlxtend" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/indpred-site .whl/*.whl && export PYTHONPATH=/tmp/indpred-site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

# step TAG NAME SECONDS COMMAND...: run with a time limit, never past the budget, only if TAG is in
# $ONLY (default: every step); go on after a failure.
ONLY=${ONLY:-check fp32 bf16 data train small memory compile graphs ksg}
step() {
    local tag=$1 name=$2 limit=$3
    shift 3
    case " $ONLY " in *" $tag "*) ;; *) return ;; esac
    local left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt 20 ]; then
        echo "== $name: skipped (budget spent)"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit}s, t=$((SECONDS - START))s)"
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    [ $rc -ne 0 ] && echo "!! $name: exit $rc"
}

TP=("$PY" benchmarks/train_throughput.py --device "$DEVICE" --json "$JSON" $ROUNDS)
BF=(--precision bf16 --channels-last)

echo "== environment"
date -u
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || true
"$PY" -c "import torch, os; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', \
torch.backends.cudnn.version(), '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU', \
'|', os.cpu_count(), 'CPUs')"

step check "correctness on the device" 90 "$PY" benchmarks/gpu_check.py --device "$DEVICE"
step fp32 "eager float32, paper widths, B=$B_BIG T=10" 100 "${TP[@]}" --widths paper -B "$B_BIG" -T 10
step graphs "the step as one CUDA graph (train.cuda_graphs) beside eager, paper widths, B=$B_SMALL T=10, fp32" 120 \
    "${TP[@]}" --widths paper -B "$B_SMALL" -T 10 --variants step-device,graphed,floor
step graphs "the step as one CUDA graph, bf16 + channels-last, paper widths, B=$B_SMALL T=10" 100 \
    "${TP[@]}" --widths paper -B "$B_SMALL" -T 10 "${BF[@]}" --variants step-device,graphed,floor
if [ "$DEVICE" != cpu ]; then  # a CPU refuses train.cuda_graphs (tests/test_graphs.py)
    GRUN=$(mktemp -d)/run
    step graphs "indpred train with train.cuda_graphs (paper preset, B=32, fp32)" 120 \
        "$PY" -m indpred train --preset mmnist-2f --out "$GRUN" --device "$DEVICE" --steps "$GRAPH_STEPS" \
        --no-progress --set train.cuda_graphs=true --set train.log_every=50 \
        --set train.checkpoint_every=0 --set train.eval_every=0 --set data.test_sequences=64
    cp "$GRUN/metrics.jsonl" "$OUT/graphed_train_metrics.jsonl" 2>/dev/null
fi
step bf16 "eager bf16 + channels-last, paper widths, B=$B_BIG T=10" 100 \
    "${TP[@]}" --widths paper -B "$B_BIG" -T 10 "${BF[@]}"
step bf16 "eager bf16 + channels-last, paper widths, B=$B_HUGE T=10" 80 \
    "${TP[@]}" --widths paper -B "$B_HUGE" -T 10 "${BF[@]}" --variants model,floor
step data "data alone, B=$B_HUGE T=10: rendered on the device or on the CPU" 80 \
    "$PY" benchmarks/data_throughput.py -B "$B_HUGE" -T 10 --workers 0,2,8 --modes device,cpu \
    --steps "$DATA_STEPS" --device "$DEVICE" --json "$JSON"
RUN=$(mktemp -d)/run
step train "indpred train on the device (paper preset, B=$B_HUGE, bf16, channels-last, 2 data workers)" 120 \
    "$PY" -m indpred train --preset mmnist-2f --out "$RUN" --device "$DEVICE" --steps "$TRAIN_STEPS" \
    --no-progress --set train.batch_size="$B_HUGE" --set train.precision=bf16 \
    --set train.channels_last=true --set train.data_workers=2 --set train.log_every=20 \
    --set train.checkpoint_every=0 --set train.eval_every=0 --set data.test_sequences=64
cp "$RUN/metrics.jsonl" "$OUT/train_metrics.jsonl" 2>/dev/null
cp "$RUN/summary.json" "$OUT/train_summary.json" 2>/dev/null
step small "eager float32, both widths, B=$B_SMALL T=10 (the presets' batch)" 80 \
    "${TP[@]}" --widths paper,demo -B "$B_SMALL" -T 10
step memory "peak memory per frame, float32" 80 "$PY" benchmarks/train_memory.py --device "$DEVICE" \
    --shapes "$MEM_SHAPES,$MEM_LONG" --checkpointing both --json "$JSON"
step compile "compiled (default) bf16, B=$B_BIG T=10" 170 \
    "${TP[@]}" --widths paper -B "$B_BIG" -T 10 --precision bf16 --compile default --variants model,floor
step compile "compiled with CUDA graphs (compile=reduce-overhead) bf16, B=$B_SMALL T=10" 150 \
    "${TP[@]}" --widths paper -B "$B_SMALL" -T 10 --precision bf16 --compile reduce-overhead \
    --variants model
step ksg "KSG mutual information, N=$KSG_N, 8 + 8 units: compiled (CPU) and torch (device)" 90 \
    "$PY" benchmarks/ksg_throughput.py -N "$KSG_N" --reference 500 --backends compiled,torch
echo "== done in $((SECONDS - START))s; results in $OUT"
