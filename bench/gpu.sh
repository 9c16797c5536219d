#!/usr/bin/env bash
# The GPU benchmarks at the paper's sizes (ResNet50, 224 px at 0.5 um/px, bf16, channels-last)
# on one CUDA GPU, in one go; each log is also written to OUTDIR.
#
#   bench/gpu.sh [--train REAL_SLIDE] [--compile-infer] OUTDIR [PYTHON]
#
# Whole-slide inference always runs: eager, reading in threads and in worker processes, then
# with --compile-infer once more compiled (torch.compile, ~1 minute of compiling first).
# --train adds the end-to-end training figure, which reads REAL_SLIDE (e.g.
# cmu-1-small-region.svs). The synthetic slide that inference reads (TUMORMAP_BENCH_SLIDE_SIZE,
# default 32768x24576) is generated first, alone, so that no figure shares the CPU with it.
set -u
usage="usage: bench/gpu.sh [--train REAL_SLIDE] [--compile-infer] OUTDIR [PYTHON]"
slide=
compile_infer=0
while [[ ${1:-} == --* ]]; do
  case $1 in
    --train) slide=${2:?$usage}; shift ;;
    --compile-infer) compile_infer=1 ;;
    *) echo "unknown option $1; $usage" >&2; exit 2 ;;
  esac
  shift
done
out=${1:?$usage}
python=${2:-python3}
slide_size=${TUMORMAP_BENCH_SLIDE_SIZE:-32768x24576}
size=(--width "${slide_size%x*}" --height "${slide_size#*x}")
mkdir -p "$out"
work=$(mktemp -d)
export PYTHONUNBUFFERED=1

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  nproc; "$python" -c 'import sys, torch; print(sys.version.split()[0], torch.__version__)'; } \
  2>&1 | tee "$out/machine.txt"

start=$SECONDS
"$python" bench/bench_infer.py --generate-only --workdir "$work" "${size[@]}" 2>&1 \
  | tee "$out/generate.log"

if [[ -n $slide ]]; then
  timeout 150 "$python" bench/bench_train.py --device cuda --arch resnet50 --patches 150 \
    --amp --channels-last --compile --warmup 3 --steps 30 --num-workers 12 14 \
    --slide "$slide" --workdir "$work" 2>&1 | tee "$out/train.log"
  echo "bench_train: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
fi

infer=(bench/bench_infer.py --device cuda --arch resnet50 --amp --channels-last --batch-size 128
  --readers 14 --skip-sequential --workdir "$work" "${size[@]}")
timeout 150 "$python" "${infer[@]}" --reader-processes 0 15 2>&1 | tee "$out/infer.log"
echo "bench_infer: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"

if ((compile_infer)); then
  timeout 240 "$python" "${infer[@]}" --compile --reader-processes 15 2>&1 \
    | tee "$out/infer_compiled.log"
  echo "bench_infer --compile: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
fi
rm -rf "$work"
