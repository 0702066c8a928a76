#!/usr/bin/env python3
"""Generates the unetr-ops parity fixtures from torch.nn.functional.

Each case is one small .safetensors file: the inputs, a random output gradient `gy`, PyTorch's output `y`
and the gradients `grad_<input>` of sum(y * gy); the op name and its parameters are JSON in the metadata.
Run from the repo root:  python scripts/gen_ops_fixtures.py   (needs torch and safetensors)
"""
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "unetr-ops", "tests", "fixtures")
torch.manual_seed(0)


def case(name, op, params, inputs, fn, outputs=None):
    """inputs: dict name -> tensor (float tensors get gradients); fn(**inputs) -> y (or dict of tensors)."""
    leaves = {k: v.clone().requires_grad_(v.is_floating_point() and k not in ("running_mean", "running_var"))
              for k, v in inputs.items()}
    res = fn(**leaves)
    extra = {}
    if isinstance(res, tuple):
        y, extra = res
    else:
        y = res
    gy = torch.randn_like(y)
    (y * gy).sum().backward()
    tensors = {k: v.detach().contiguous() for k, v in inputs.items()}
    tensors["y"] = y.detach().contiguous()
    tensors["gy"] = gy.contiguous()
    for k, v in leaves.items():
        if v.grad is not None:
            tensors["grad_" + k] = v.grad.contiguous()
    for k, v in extra.items():
        tensors[k] = v.detach().contiguous()
    save_file(tensors, os.path.join(OUT, name + ".safetensors"), metadata={"op": op, "params": json.dumps(params)})


def r(*shape):
    return torch.randn(*shape)


def conv_cases():
    specs = [
        # name, N, Ci, Co, input, kernel, stride, padding, bias
        ("conv3d_k3s1p1", 2, 3, 4, (5, 6, 7), (3, 3, 3), (1, 1, 1), (1, 1, 1), True),
        ("conv3d_k1", 1, 5, 3, (4, 4, 4), (1, 1, 1), (1, 1, 1), (0, 0, 0), False),
        ("conv3d_patch_k4s4", 1, 2, 8, (8, 8, 12), (4, 4, 4), (4, 4, 4), (0, 0, 0), True),
        ("conv3d_aniso", 2, 2, 3, (7, 5, 8), (3, 2, 1), (2, 1, 3), (1, 0, 0), False),
        ("conv3d_k3s2p1", 1, 3, 2, (9, 7, 6), (3, 3, 3), (2, 2, 2), (1, 1, 1), True),
        ("conv3d_pad_ge_kernel", 1, 2, 2, (4, 5, 3), (1, 2, 3), (1, 1, 1), (1, 2, 0), False),
        ("conv3d_k3_odd_sizes", 1, 1, 2, (3, 11, 1), (3, 3, 1), (1, 1, 1), (1, 1, 0), True),
    ]
    for name, n, ci, co, inp, k, s, p, bias in specs:
        ins = {"x": r(n, ci, *inp), "w": r(co, ci, *k) * 0.3}
        if bias:
            ins["b"] = r(co)
        case(name, "conv3d", {"stride": s, "padding": p}, ins,
             lambda x, w, b=None, s=s, p=p: F.conv3d(x, w, b, stride=s, padding=p))

    tspecs = [
        # name, N, Ci, Co, input, kernel, stride, padding, output_padding, bias
        ("convt3d_k2s2", 2, 4, 3, (3, 4, 5), (2, 2, 2), (2, 2, 2), (0, 0, 0), (0, 0, 0), True),
        ("convt3d_k3s1p1", 1, 3, 2, (4, 5, 3), (3, 3, 3), (1, 1, 1), (1, 1, 1), (0, 0, 0), False),
        ("convt3d_k3s2p1op1", 1, 2, 3, (3, 4, 3), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), True),
        ("convt3d_aniso", 2, 2, 2, (3, 2, 4), (2, 3, 1), (2, 2, 1), (0, 1, 0), (1, 0, 0), False),
    ]
    for name, n, ci, co, inp, k, s, p, op, bias in tspecs:
        ins = {"x": r(n, ci, *inp), "w": r(ci, co, *k) * 0.3}
        if bias:
            ins["b"] = r(co)
        case(name, "conv_transpose3d", {"stride": s, "padding": p, "output_padding": op}, ins,
             lambda x, w, b=None, s=s, p=p, op=op: F.conv_transpose3d(x, w, b, stride=s, padding=p, output_padding=op))


def norm_cases():
    x = r(2, 3, 4, 5, 6) * 2 + 1
    case("instance_norm", "instance_norm", {"eps": 1e-5}, {"x": x}, lambda x: F.instance_norm(x, eps=1e-5))
    case("instance_norm_affine", "instance_norm", {"eps": 1e-5},
         {"x": r(1, 4, 3, 3, 5), "weight": r(4), "bias": r(4)},
         lambda x, weight, bias: F.instance_norm(x, weight=weight, bias=bias, eps=1e-5))
    case("instance_norm_leaky_relu", "instance_norm_leaky_relu", {"eps": 1e-5, "slope": 0.01},
         {"x": r(2, 4, 5, 3, 4)}, lambda x: F.leaky_relu(F.instance_norm(x, eps=1e-5), 0.01))

    def bn(training):
        def f(x, weight, bias, running_mean, running_var):
            rm, rv = running_mean.clone(), running_var.clone()
            y = F.batch_norm(x, rm, rv, weight, bias, training=training, momentum=0.1, eps=1e-5)
            return y, {"new_running_mean": rm, "new_running_var": rv}
        return f

    for training in (True, False):
        case("batch_norm_" + ("train" if training else "eval"), "batch_norm",
             {"eps": 1e-5, "momentum": 0.1, "training": training},
             {"x": r(3, 4, 3, 2, 5) + 0.5, "weight": r(4), "bias": r(4),
              "running_mean": r(4) * 0.1, "running_var": torch.rand(4) + 0.5}, bn(training))

    case("layer_norm", "layer_norm", {"eps": 1e-5}, {"x": r(2, 7, 16) * 3, "weight": r(16), "bias": r(16)},
         lambda x, weight, bias: F.layer_norm(x, (16,), weight, bias, eps=1e-5))
    case("layer_norm_plain", "layer_norm", {"eps": 1e-6}, {"x": r(5, 33)},
         lambda x: F.layer_norm(x, (33,), eps=1e-6))


def act_cases():
    x = r(3, 50)
    x[0, :5] = 0.0
    case("leaky_relu_001", "leaky_relu", {"slope": 0.01}, {"x": x}, lambda x: F.leaky_relu(x, 0.01))
    case("leaky_relu_02", "leaky_relu", {"slope": 0.2}, {"x": r(2, 3, 4)}, lambda x: F.leaky_relu(x, 0.2))
    case("linear_bias", "linear", {}, {"x": r(2, 5, 7), "w": r(4, 7), "b": r(4)}, lambda x, w, b: F.linear(x, w, b))
    case("linear", "linear", {}, {"x": r(3, 9), "w": r(6, 9)}, lambda x, w: F.linear(x, w))
    case("softmax", "softmax_last_dim", {}, {"x": r(2, 3, 9) * 4}, lambda x: F.softmax(x, dim=-1))
    q, k, v = r(2, 3, 5, 4), r(2, 3, 7, 4), r(2, 3, 7, 4)
    case("attention", "attention", {"scale": 0.5}, {"q": q, "k": k, "v": v},
         lambda q, k, v: F.scaled_dot_product_attention(q, k, v, scale=0.5))
    # (appended last so that the earlier cases keep their random draws)
    x = r(4, 37) * 3
    x[0, :3] = torch.tensor([0.0, 5.0, -5.0])
    case("gelu", "gelu", {}, {"x": x}, lambda x: F.gelu(x))
    case("add_leaky_relu", "add_leaky_relu", {"slope": 0.01}, {"a": r(2, 3, 4, 5), "b": r(2, 3, 4, 5)},
         lambda a, b: F.leaky_relu(a + b, 0.01))


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    conv_cases()
    norm_cases()
    act_cases()
    print("fixtures written to", os.path.normpath(OUT))
