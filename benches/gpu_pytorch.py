#!/usr/bin/env python3
"""PyTorch side of `cargo xtask gpu-check` on the same GPU in the same device call: MONAI's UNETR (BTCV
config) forward in eager f32 and under bf16 autocast, a training step (forward + DiceCE + backward + AdamW) in
f32 and with AMP, and torch's scaled_dot_product_attention fwd+bwd on the attention shape gpu-check times.
The GPU machine has PyTorch but not MONAI: put a MONAI wheel (pure Python) on sys.path with --monai-wheel.

Usage: gpu_pytorch.py [--device cuda] [--size 96,96,96] [--repeats 5] [--monai-wheel PATH.whl]
Prints one JSON line of median milliseconds.
"""
import argparse, json, sys, time

ap = argparse.ArgumentParser()
ap.add_argument("--device", default="cuda")
ap.add_argument("--size", default="96,96,96")
ap.add_argument("--repeats", type=int, default=5)
ap.add_argument("--attn-len", type=int, default=216)
ap.add_argument("--monai-wheel")
a = ap.parse_args()
if a.monai_wheel:
    sys.path.insert(0, a.monai_wheel)
import torch  # noqa: E402
from monai.losses import DiceCELoss  # noqa: E402
from monai.networks.nets import UNETR  # noqa: E402

dev = torch.device(a.device)
size = [int(s) for s in a.size.split(",")]
sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)


def median_ms(f):
    f()
    sync()
    ts = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        f()
        sync()
        ts.append((time.perf_counter() - t) * 1e3)
    return sorted(ts)[len(ts) // 2]


net = UNETR(in_channels=1, out_channels=14, img_size=size, feature_size=16).to(dev)
x = torch.randn(1, 1, *size, device=dev)
y = torch.randint(0, 14, (1, 1, *size), device=dev)
loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, smooth_nr=0.0, smooth_dr=1e-6)
opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-5)
res = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"}
net.eval()
with torch.inference_mode():
    res["forward_f32_ms"] = median_ms(lambda: net(x))
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        res["forward_bf16_autocast_ms"] = median_ms(lambda: net(x))
net.train()


def step(amp):
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
        loss = loss_fn(net(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


res["train_step_f32_ms"] = median_ms(lambda: step(False))
res["train_step_amp_bf16_ms"] = median_ms(lambda: step(True))
q = torch.randn(1, 12, a.attn_len, 64, device=dev, requires_grad=True)


def attn(fused):
    if fused:
        o = torch.nn.functional.scaled_dot_product_attention(q, q, q, scale=0.125)
    else:
        o = torch.softmax(q @ q.transpose(-1, -2) * 0.125, -1) @ q
    o.sum().backward()


res["sdpa_fwd_bwd_ms"] = median_ms(lambda: attn(True))
res["attention_unfused_fwd_bwd_ms"] = median_ms(lambda: attn(False))
if dev.type == "cuda":
    res["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
print(json.dumps(res))
