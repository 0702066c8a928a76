#!/usr/bin/env bash
# Proves `cargo build --release --features cuda,nccl --workspace` compiles on a machine without a GPU,
# with the CUDA 13 toolchain from PyPI wheels (../shared/tools/cuda-toolchain.sh, see ../shared/docs/gpu.md).
# Nothing built here runs here: libcuda comes with an NVIDIA driver.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fetch -q
if [ ! -f ../shared/tools/cuda-toolchain.sh ]; then
  echo "error: ../shared/tools/cuda-toolchain.sh not found (the shared folder sits beside the repository)" >&2
  exit 1
fi
# shellcheck disable=SC1091
if ! source ../shared/tools/cuda-toolchain.sh; then
  echo "note: the CUDA toolchain wheels could not be installed (network?); cuda build check skipped" >&2
  [ -n "${UNETR_SKIP_LOG:-}" ] && echo "cuda build: the CUDA toolchain wheels could not be installed" >> "$UNETR_SKIP_LOG"
  exit 0
fi
# No debug info; for CI (the default) no optimisation either: that build only proves that everything compiles
# and links (neither depends on the optimisation level), and it is CI's longest step. UNETR_CUDA_OPT=1 builds
# the optimised binary that runs on a GPU (target/cuda; scripts/prepare-gpu-run.sh uses it).
if [ "${UNETR_CUDA_OPT:-0}" = 1 ]; then
  CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda} cargo build --release --features cuda,nccl --workspace
else
  CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_OPT_LEVEL=0 CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda-check} \
    cargo build --release --features cuda,nccl --workspace
fi
# The PTX nvcc built defines every entry point unetr-ops launches (this crate links no CUDA library, so its
# test runs here).
CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda-check} cargo test -q --release -p unetr-kernels --features ptx
echo "cuda build: ok"
