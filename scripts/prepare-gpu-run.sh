#!/usr/bin/env bash
# Prepares the one-call GPU check (../shared/docs/gpu.md): builds the CUDA release binary here and puts it, a
# MONAI wheel (the GPU machine has PyTorch but not MONAI) and the run script into .cudabin/ (git-ignored;
# carried with `run(carry=[".cudabin"])`). Then, in the device call:  bash .cudabin/gpu-run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
UNETR_CUDA_OPT=1 bash scripts/check-cuda-build.sh
mkdir -p .cudabin
cp target/cuda/release/xtask .cudabin/xtask
strip .cudabin/xtask 2>/dev/null || true
python3 -m pip download -q --no-deps monai==1.6.1 -d .cudabin
cp scripts/gpu-run.sh benches/gpu_pytorch.py .cudabin/
du -sh .cudabin
