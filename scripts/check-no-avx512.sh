#!/usr/bin/env bash
# Runs the release binary on an emulated CPU without AVX-512 (qemu-user, -cpu Haswell: AVX2 + FMA) and
# checks a UNETR forward against MONAI's logits from the committed fixture. Catches an AVX-512 instruction
# reached without the run-time CPU check (it would die with SIGILL).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v qemu-x86_64 >/dev/null; then
  apt-get install -y -q qemu-user >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q qemu-user >/dev/null 2>&1; } || {
    echo "check-no-avx512: qemu-user not installable here; skipped"
    [ -n "${UNETR_SKIP_LOG:-}" ] && echo "check-no-avx512: qemu-user not installable" >> "$UNETR_SKIP_LOG"
    exit 0; }
fi
cargo build --release -q -p xtask -p unetr-cli
F=crates/unetr-model/tests/fixtures
out=$(mktemp -d)/out.safetensors
qemu-x86_64 -cpu Haswell target/release/unetr forward --config $F/tiny_conv_instance.json \
  --weights $F/tiny_conv_instance.weights.safetensors --input $F/tiny_conv_instance.io.safetensors --output "$out" 2>&1 | grep -v "TCG doesn't support"
target/release/xtask compare --a "$out" --a-key output --b $F/tiny_conv_instance.io.safetensors --b-key output --tol 1e-4
echo "check-no-avx512: ok"
