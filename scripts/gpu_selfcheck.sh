#!/usr/bin/env bash
# The Gluon (and torch) GPU path on your card, in under 10 minutes: run this on a
# machine with a supported NVIDIA GPU and send back the .tar.gz it writes.
#
#   bash scripts/gpu_selfcheck.sh            # after: make install MXNET_EXTRA=gpu
#
# It runs: bench.doctor; one demo-data epoch per attention on the GPU; fusion off and
# on; TF32 off and on; AMP; a checkpoint taken on the GPU resumed on the CPU; two GPUs
# if present; a demo sweep with two trials per card (gpus_per_trial 0.5); and the test
# suite's fast part. Nothing is downloaded; everything goes to one folder.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-gpu-selfcheck-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
step() {   # step NAME COMMAND...: run, log, record the exit code; never stop the script
    local name=$1; shift
    echo "== $name: $*" | tee -a "$OUT/summary.txt"
    local started=$SECONDS
    timeout 600 "$@" >"$OUT/$name.log" 2>&1
    local code=$?
    echo "   exit $code, $((SECONDS - started)) s" | tee -a "$OUT/summary.txt"
}
TRAIN=(-m bench.train --demo-data --num-epochs 1 --batch-size 128 --quiet --model cifar_resnet20_v1)

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
step doctor "$PY" -m bench.doctor
for attention in none se eca gct; do
    step "epoch-gluon-$attention" "$PY" "${TRAIN[@]}" --num-gpus 1 --attention "$attention"
    step "epoch-torch-$attention" "$PY" "${TRAIN[@]}" --num-gpus 1 --attention "$attention" --backend torch
done
step fusion-off env MXNET_USE_FUSION=0 "$PY" "${TRAIN[@]}" --num-gpus 1 --attention se
step fusion-on env MXNET_USE_FUSION=1 "$PY" "${TRAIN[@]}" --num-gpus 1 --attention se
step tf32-off "$PY" "${TRAIN[@]}" --num-gpus 1 --attention se --no-tf32
step tf32-off-torch "$PY" "${TRAIN[@]}" --num-gpus 1 --attention se --no-tf32 --backend torch
step tf32-on "$PY" "${TRAIN[@]}" --num-gpus 1 --attention se
step amp-gluon "$PY" "${TRAIN[@]}" --num-gpus 1 --attention se --precision amp_float16
step amp-torch "$PY" "${TRAIN[@]}" --num-gpus 1 --attention se --backend torch --precision amp_bfloat16
step checkpoint-on-gpu "$PY" "${TRAIN[@]}" --num-gpus 1 --attention gct --checkpoint-dir "$OUT/checkpoint"
step resume-on-cpu "$PY" -m bench.train --demo-data --num-epochs 2 --batch-size 128 --quiet \
    --model cifar_resnet20_v1 --attention gct --num-gpus 0 --checkpoint-dir "$OUT/checkpoint"
if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ]; then
    step two-gpus "$PY" "${TRAIN[@]}" --num-gpus 2 --attention eca
fi
sed -e 's/gpus_per_trial: 0$/gpus_per_trial: 0.5/' -e 's/epochs: 3/epochs: 1/' \
    -e 's/^name: demo/name: gpu-selfcheck/' -e "s#\.\./results#../$OUT/results#" \
    -e 's/seeds: \[0, 1\]/seeds: [0]/' sweeps/demo.yaml >"sweeps/.gpu-selfcheck.yaml"
step half-gpu-sweep "$PY" run_sweep.py --config sweeps/.gpu-selfcheck.yaml --no-report
rm -f sweeps/.gpu-selfcheck.yaml
step tests "$PY" -m pytest -m "not slow" -q -x
tar czf "$OUT.tar.gz" "$OUT" && echo "send back: $OUT.tar.gz" | tee -a "$OUT/summary.txt"
