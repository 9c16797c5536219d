#!/usr/bin/env bash
# Both GPU benchmarks at the paper's sizes (ResNet50, 224 px at 0.5 um/px, bf16,
# channels-last) on one CUDA GPU, in one go; each log is also written to OUTDIR.
#
#   bench/gpu.sh REAL_SLIDE OUTDIR [PYTHON]
#
# REAL_SLIDE is read by the end-to-end training figure (e.g. cmu-1-small-region.svs). The
# synthetic 32768 x 24576 slide that inference reads is generated first, alone, so that no
# figure shares the CPU with it.
set -u
slide=${1:?usage: bench/gpu.sh REAL_SLIDE OUTDIR [PYTHON]}
out=${2:?usage: bench/gpu.sh REAL_SLIDE OUTDIR [PYTHON]}
python=${3:-python3}
size=(--width 32768 --height 24576)
mkdir -p "$out"
work=$(mktemp -d)
export PYTHONUNBUFFERED=1

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  nproc; "$python" -c 'import sys, torch; print(sys.version.split()[0], torch.__version__)'; } \
  2>&1 | tee "$out/machine.txt"

start=$SECONDS
"$python" bench/bench_infer.py --generate-only --workdir "$work" "${size[@]}" 2>&1 \
  | tee "$out/generate.log"

timeout 150 "$python" bench/bench_train.py --device cuda --arch resnet50 --patches 150 \
  --amp --channels-last --compile --warmup 3 --steps 30 --num-workers 12 14 \
  --slide "$slide" --workdir "$work" 2>&1 | tee "$out/train.log"
echo "bench_train: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"

timeout 120 "$python" bench/bench_infer.py --device cuda --arch resnet50 --amp --channels-last \
  --batch-size 128 --readers 14 --reader-processes 0 15 --skip-sequential --workdir "$work" \
  "${size[@]}" \
  2>&1 | tee "$out/infer.log"
echo "bench_infer: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
rm -rf "$work"
