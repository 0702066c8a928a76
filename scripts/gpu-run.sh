#!/usr/bin/env bash
# The device command (prepared by scripts/prepare-gpu-run.sh): finds the CUDA 13 libraries PyTorch ships,
# runs `xtask gpu-check` (every CUDA op and the model against the CPU, training steps, timings), the PyTorch +
# MONAI side on the same GPU (cuDNN and NCCL come from the same wheels), and `xtask bench --device cuda`
# (forward and training step side by side with PyTorch + MONAI, peak device memory), and leaves the reports
# under $OUT (default runs/gpu).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
libs=$(find / \( -name 'libcublas.so.13*' -o -name 'libcurand.so.10*' -o -name 'libcudart.so.13*' -o -name 'libnvrtc.so.13*' -o -name 'libcudnn.so.9*' -o -name 'libnccl.so.2*' \) 2>/dev/null | xargs -r -n1 dirname | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/device.txt"
# GPU_CHECK_ARGS=--dry-run PYTORCH_ARGS="--device cpu --size 32,32,32" BENCH_ARGS="--device cpu --size 32,32,32"
# rehearses this script on a CPU machine.
.cudabin/xtask gpu-check ${GPU_CHECK_ARGS:-} --out "$OUT/gpu-check" 2>&1 | tee "$OUT/gpu-check.log"
echo "gpu-check rc=${PIPESTATUS[0]}"
whl=$(ls .cudabin/monai-*.whl | head -n 1)
${PYTHON:-python3} .cudabin/gpu_pytorch.py --monai-wheel "$whl" ${PYTORCH_ARGS:-} 2>&1 | tee "$OUT/pytorch.json"
# The side-by-side bench; MONAI (pure Python) imports from the wheel.
PYTHONPATH="$whl${PYTHONPATH:+:$PYTHONPATH}" UNETR_PYTHON=${PYTHON:-python3} \
  .cudabin/xtask bench ${BENCH_ARGS:---device cuda --repeats 5 --rounds 2} --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.md"
echo "bench rc=${PIPESTATUS[0]}"
