#!/usr/bin/env bash
# The paper-width Moving MNIST pair on one GPU for a fixed number of minutes, in one prepared go.
#
# Trains side by side, each for TRAIN_S seconds of wall clock (then SIGTERM: the run finishes its
# step, checkpoints and stops, as after Ctrl-C):
#   pair/factored-seed{0,1,2}   mmnist-2f, the paper's configuration (shared generator)
#   pair/entangled-seed{0,1,2}  its entangled twin (K = 1, d = 32)     (SEEDS="0 1 2" by default)
#   perfactor/factored-seed0    mmnist-2f with the demo's per-factor generator and 3 free nats
# all in bf16 with channels-last (the paper's own precision is float32), on the full MNIST IDX
# files in $MNIST. Then it evaluates every run on the device (`indpred eval --sequences 128`) and
# packs into $OUT: the log, runs.tar.gz (every run folder but its weights) and the float32
# weights of pair/factored-seed0, both in parts of 15 MB (a GPU lease here returns at most 8 files
# of 16 MiB; `cat runs.tar.gz.part* | tar xz` unpacks). Assemble the tables afterwards, on any machine, with
#   python experiments/run_pair.py --preset mmnist-2f --seeds 0 1 2 --no-train --out DIR/pair
#
#   bash experiments/gpu_pair.sh                                  # on a CUDA machine
#   DEVICE=cpu SMOKE=1 bash experiments/gpu_pair.sh    # 2 steps each at tiny sizes on the CPU (a check)
#
# Python packages that torch's GPU image may lack (PyAV, mlxtend) are installed from wheels in
# .whl/ when present. Nothing is downloaded.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
DEVICE=${DEVICE:-cuda}
TRAIN_S=${TRAIN_S:-390}
EVAL_S=${EVAL_S:-110}
MNIST=${MNIST:-.gpu-data/mnist}
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
RUNS=${RUNS:-$(mktemp -d)/gpu-pair}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/gpu-pair.log") 2>&1

if ls .whl/*.whl >/dev/null 2>&1 && ! "$PY" -c "import av, mlxtend" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/indpred-site .whl/*.whl && export PYTHONPATH=/tmp/indpred-site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

STEPS=${STEPS:-$([ -n "${SMOKE:-}" ] && echo 2 || echo 50000)}  # the wall clock stops them first
COMMON=(--device "$DEVICE" --no-progress --steps "$STEPS" --set train.threads=2 --set train.log_every=50)
EVAL=(--sequences 128)
if [ -n "${SMOKE:-}" ]; then  # every step runs at tiny sizes; nothing is measured
    COMMON+=(--set train.threads=1 --set model.width=0.125 --set model.factor_dim=4
             --set model.transition_hidden=32 --set data.seq_len=3 --set data.test_sequences=8
             --set train.batch_size=4 --set train.log_every=1 --set train.eval_every=0 --set train.checkpoint_every=0)
    EVAL=(--sequences 8 --iw-samples 2 --partitions 2)
else
    COMMON+=(--set train.precision=bf16 --set train.channels_last=true)
fi
[ -d "$MNIST" ] && COMMON+=(--mnist "$MNIST") || echo "no MNIST folder $MNIST: the embedded digits"

echo "== environment ($(date -u))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
"$PY" -c "import torch, os; print('torch', torch.__version__, '|', torch.cuda.get_device_name() \
if torch.cuda.is_available() else 'no GPU', '|', os.cpu_count(), 'CPUs')"

# name preset seed extra-sets...
launch() {
    local name=$1 preset=$2 seed=$3
    shift 3
    mkdir -p "$(dirname "$RUNS/$name")"
    timeout -s TERM --kill-after=90 "$TRAIN_S" "$PY" -m indpred train --preset "$preset" \
        --out "$RUNS/$name" "${COMMON[@]}" --set train.seed="$seed" --set data.seed="$seed" "$@" \
        >"$RUNS/$name.log" 2>&1 &
    PIDS+=($!)
    NAMES+=("$name")
}
PIDS=()
NAMES=()
for s in ${SEEDS:-0 1 2}; do
    launch "pair/factored-seed$s" mmnist-2f "$s"
    launch "pair/entangled-seed$s" mmnist-entangled "$s"
done
launch perfactor/factored-seed0 mmnist-2f 0 --set model.decoder=per-factor --set train.free_bits=3
echo "== ${#PIDS[@]} trainings launched for ${TRAIN_S}s each (t=$((SECONDS - START))s)"

CHECK=
if [ -z "${SMOKE:-}" ] && [ "$DEVICE" != cpu ]; then  # the checks of the GPU paths, beside the trainings
    timeout 150 "$PY" benchmarks/gpu_check.py --device "$DEVICE" >"$RUNS/gpu_check.log" 2>&1 &
    CHECK=$!
fi
( while sleep 5; do [ $(((SECONDS - START) % 60)) -lt 5 ] && echo "-- t=$((SECONDS - START))s: GPU \
$(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null)"; done ) &
MONITOR=$!
for i in "${!PIDS[@]}"; do
    wait "${PIDS[$i]}"
    echo "== ${NAMES[$i]}: exit $? ($((SECONDS - START))s); $(tail -n 1 "$RUNS/${NAMES[$i]}.log")"
done
kill "$MONITOR" 2>/dev/null
[ -n "$CHECK" ] && wait "$CHECK"

echo "== evaluating (limit ${EVAL_S}s, t=$((SECONDS - START))s)"
EPIDS=()
for name in "${NAMES[@]}"; do
    OMP_NUM_THREADS=2 timeout -s TERM "$EVAL_S" "$PY" -m indpred eval "$RUNS/$name" --device "$DEVICE" \
        --no-progress "${EVAL[@]}" >"$RUNS/$name.eval.log" 2>&1 &
    EPIDS+=($!)
done
for i in "${!EPIDS[@]}"; do
    wait "${EPIDS[$i]}"
    echo "== eval ${NAMES[$i]}: exit $?; $(tail -n 2 "$RUNS/${NAMES[$i]}.eval.log" | tr '\n' ' ')"
done

echo "== packing (t=$((SECONDS - START))s)"
cat "$RUNS/gpu_check.log" 2>/dev/null
tar czf - -C "$RUNS" --exclude='*.safetensors' --exclude='.lock' . | split -b 15M -d - "$OUT/runs.tar.gz.part"
last=$(ls -d "$RUNS"/pair/factored-seed0/checkpoints/step-* 2>/dev/null | tail -n 1)
[ -n "$last" ] && split -b 15M -d "$last/model.safetensors" \
    "$OUT/weights-pair-factored-seed0-$(basename "$last").part"
ls -la "$OUT"
echo "== done in $((SECONDS - START))s"
