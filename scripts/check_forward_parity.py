#!/usr/bin/env python3
"""Full-size parity of `cargo xtask forward` with MONAI's UNETR on random weights.

Builds monai.networks.nets.UNETR from a config (default: BTCV, 1 -> 14, 96^3, f=16) with MONAI's own random
init, saves its state dict (.safetensors and .pth) and a random input, runs `cargo xtask forward` on both
weight files, and prints the max-abs difference of the logits. Exit status 1 if it exceeds --tol.
Usage: python scripts/check_forward_parity.py [--config CFG.json] [--tol 1e-4] [--workdir DIR]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from monai.networks.nets import UNETR
from safetensors.torch import load_file, save_file

ap = argparse.ArgumentParser()
ap.add_argument("--config")
ap.add_argument("--tol", type=float, default=1e-4)
ap.add_argument("--workdir", default=tempfile.mkdtemp(prefix="unetr-parity-"))
ap.add_argument("--seed", type=int, default=0)
args = ap.parse_args()

cfg = json.load(open(args.config)) if args.config else dict(in_channels=1, out_channels=14, img_size=[96, 96, 96])
torch.manual_seed(args.seed)
net = UNETR(**cfg).eval()
img = cfg["img_size"] if isinstance(cfg["img_size"], list) else [cfg["img_size"]] * 3
x = torch.randn(1, cfg["in_channels"], *img)
with torch.no_grad():
    ref = net(x)
d = args.workdir
os.makedirs(d, exist_ok=True)
json.dump(cfg, open(f"{d}/config.json", "w"))
sd = {k: v.contiguous() for k, v in net.state_dict().items()}
save_file(sd, f"{d}/weights.safetensors")
torch.save(net.state_dict(), f"{d}/weights.pth")
save_file({"input": x}, f"{d}/input.safetensors")
worst = 0.0
for w in ["weights.safetensors", "weights.pth"]:
    subprocess.run(["cargo", "xtask", "forward", "--config", f"{d}/config.json", "--weights", f"{d}/{w}",
                    "--input", f"{d}/input.safetensors", "--output", f"{d}/output.safetensors"], check=True)
    out = load_file(f"{d}/output.safetensors")["output"]
    err = (out - ref).abs().max().item()
    worst = max(worst, err)
    print(f"{w}: logits {tuple(out.shape)}, max-abs difference vs MONAI {err:.3e} (logit scale {ref.abs().max().item():.3f})")
print(f"monai {__import__('monai').__version__}, torch {torch.__version__}, config {cfg}")
sys.exit(0 if worst <= args.tol else 1)
