#!/usr/bin/env python3
"""PyTorch + MONAI side of `cargo xtask bench`: UNETR forward (or training step: forward + DiceCE + backward +
AdamW) latency and peak memory, in its own process.

Usage: model_pytorch.py --size D,H,W --repeats N [--in-channels 1 --out-channels 14 --feature-size 16] [--device cuda:N]
Prints one JSON line: {"forward_s": [...] (seconds per forward or per training step), "peak_rss_kb": ..., "torch": ..., "monai": ..., "threads": ...,
"ops": torch.profiler's self CPU time per op for one pass (profile: a forward; train: a training step), "ops_wall_s": that pass's wall time,
"peak_device_bytes": torch.cuda.max_memory_allocated() on a CUDA device, else 0}.
On a CUDA device every timed pass ends with torch.cuda.synchronize(), and the CPU profiles are skipped.
"""
import argparse
import json
import os
import resource
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--size", default="96,96,96")
ap.add_argument("--repeats", type=int, default=5)
ap.add_argument("--in-channels", type=int, default=1)
ap.add_argument("--out-channels", type=int, default=14)
ap.add_argument("--feature-size", type=int, default=16)
ap.add_argument("--mode", choices=["forward", "train", "profile", "sliding"], default="forward")
ap.add_argument("--device", default="cpu")
args = ap.parse_args()
dev = torch.device(args.device)
if dev.type == "cuda" and args.mode == "profile":
    raise SystemExit("the per-module and per-op profile measures the CPU only")


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)

torch.set_num_threads(int(os.environ.get("RAYON_NUM_THREADS", os.cpu_count() or 1)))
import monai  # noqa: E402
from monai.networks.nets import UNETR  # noqa: E402

size = [int(s) for s in args.size.split(",")]
net = UNETR(in_channels=args.in_channels, out_channels=args.out_channels, img_size=size,
            feature_size=args.feature_size).eval().to(dev)
x = torch.randn(1, args.in_channels, *size, device=dev)
times = []
if args.mode == "forward":
    with torch.inference_mode():
        net(x)  # warm-up
        sync()
        for _ in range(args.repeats):
            t = time.perf_counter()
            net(x)
            sync()
            times.append(time.perf_counter() - t)
elif args.mode == "profile":
    # Wall time per top-level module (forward hooks), median over the repeats.
    names = ["vit", "encoder1", "encoder2", "encoder3", "encoder4", "decoder5", "decoder4", "decoder3", "decoder2", "out"]
    acc = {n: [] for n in names}
    start = {}
    for n in names:
        m = getattr(net, n)
        m.register_forward_pre_hook(lambda _m, _i, n=n: start.__setitem__(n, time.perf_counter()))
        m.register_forward_hook(lambda _m, _i, _o, n=n: acc[n].append((time.perf_counter() - start[n]) * 1e3))
    with torch.inference_mode():
        net(x)
        for n in names:
            acc[n].clear()
        for _ in range(args.repeats):
            t = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - t)
    modules = {n: sorted(v)[len(v) // 2] for n, v in acc.items()}
elif args.mode == "sliding":
    from monai.inferers import sliding_window_inference
    big = torch.randn(1, args.in_channels, 256, 256, 160, device=dev)
    with torch.inference_mode():
        t = time.perf_counter()
        sliding_window_inference(big, size, 4, net, overlap=0.5, mode="gaussian")
        sync()
        times.append(time.perf_counter() - t)
else:
    from monai.losses import DiceCELoss
    net.train()
    y = torch.randint(0, args.out_channels, (1, 1, *size), device=dev).float()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, smooth_nr=0.0, smooth_dr=1e-6)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-5)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()
        sync()

    # Two warm-ups: AdamW's moments are made by the first update, so the second step is the first at the
    # steady state (as on our side).
    step()
    step()
    for _ in range(args.repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)

def op_table(fn):
    """One pass under torch.profiler: self CPU time per op (the rows of key_averages()), largest first."""
    from torch.profiler import ProfilerActivity, profile
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    wall = time.perf_counter() - t
    rows = [{"name": e.key, "calls": e.count, "seconds": e.self_cpu_time_total / 1e6} for e in prof.key_averages()]
    rows.sort(key=lambda r: -r["seconds"])
    return rows[:25], wall, sum(r["seconds"] for r in rows)


ops, ops_wall_s, ops_self_total_s = [], 0.0, 0.0
if args.mode == "profile":
    with torch.inference_mode():
        ops, ops_wall_s, ops_self_total_s = op_table(lambda: net(x))
elif args.mode == "train" and dev.type == "cpu":
    ops, ops_wall_s, ops_self_total_s = op_table(step)

print(json.dumps({
    "ops": ops, "ops_wall_s": ops_wall_s, "ops_self_total_s": ops_self_total_s,
    "forward_s": times,
    "modules": locals().get("modules", {}),
    "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "peak_device_bytes": torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else 0,
    "torch": torch.__version__, "monai": monai.__version__, "threads": torch.get_num_threads(),
}))
