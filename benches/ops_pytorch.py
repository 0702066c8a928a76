#!/usr/bin/env python3
"""PyTorch side of `cargo xtask bench ops`: the same cases, timed the same way.

Usage: ops_pytorch.py CASES.json REPEATS   -> progress on stderr, one JSON line {name: {fwd_ms, bwd_ms}} on stdout.
Forward: the op under torch.no_grad(). Backward: torch.autograd.grad of the op's output w.r.t. input and
weight with a random output gradient (the graph built once, retained).
"""
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(int(os.environ.get("RAYON_NUM_THREADS", os.cpu_count() or 1)))


def median_ms(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    ts.sort()
    return ts[len(ts) // 2]


def bench(c, repeats):
    s = c["size"]
    if c["kind"] in ("conv", "convt"):
        k, st, p = c["kernel"], c["stride"], c["padding"]
        x = torch.randn(1, c["ci"], s, s, s)
        if c["kind"] == "conv":
            w = torch.randn(c["co"], c["ci"], k, k, k)
            op = lambda x, w: F.conv3d(x, w, None, st, p)
        else:
            w = torch.randn(c["ci"], c["co"], k, k, k)
            op = lambda x, w: F.conv_transpose3d(x, w, None, st, p)
        with torch.no_grad():
            fwd = median_ms(lambda: op(x, w), repeats)
        xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = op(xg, wg)
        gy = torch.randn_like(y)
        bwd = median_ms(lambda: torch.autograd.grad(y, (xg, wg), gy, retain_graph=True), repeats)
    else:
        x = torch.randn(1, c["ci"], s, s, s)
        if c["kind"] == "in_lrelu":
            op = lambda x: F.leaky_relu(F.instance_norm(x, eps=1e-5), 0.01)
        else:
            op = lambda x: F.instance_norm(x, eps=1e-5)
        with torch.no_grad():
            fwd = median_ms(lambda: op(x), repeats)
        xg = x.clone().requires_grad_()
        y = op(xg)
        gy = torch.randn_like(y)
        bwd = median_ms(lambda: torch.autograd.grad(y, (xg,), gy, retain_graph=True), repeats)
    return {"fwd_ms": fwd, "bwd_ms": bwd}


def main():
    cases = json.load(open(sys.argv[1]))
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    out = {}
    for c in cases:
        out[c["name"]] = bench(c, repeats)
        print(f"torch  {c['name']:<28} fwd {out[c['name']]['fwd_ms']:8.2f} ms  bwd {out[c['name']]['bwd_ms']:8.2f} ms",
              file=sys.stderr, flush=True)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
