#!/usr/bin/env python3
"""Generates UNETR parity fixtures from MONAI (monai.networks.nets.UNETR) for crates/unetr-model/tests.

Per case NAME: NAME.json (the config, MONAI's argument names), NAME.weights.safetensors (MONAI's state dict),
NAME.io.safetensors: "input", "output" (logits, eval mode), "feat.<module>" intermediates, and for the
gradient cases "proj" (a fixed random tensor R) and "grad.<param>" = d sum(logits * R) / d param.
Run from the repo root: python scripts/gen_model_fixtures.py   (needs torch, monai, einops, safetensors)
"""
import json
import os

import torch
from monai.networks.nets import UNETR
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "unetr-model", "tests", "fixtures")

CASES = [
    dict(name="tiny_conv_instance", batch=2, grads=True,
         cfg=dict(in_channels=1, out_channels=3, img_size=[16, 32, 16], feature_size=2, hidden_size=24, mlp_dim=48,
                  num_heads=2, proj_type="conv", norm_name="instance", res_block=True, dropout_rate=0.0, qkv_bias=False)),
    dict(name="tiny_perceptron_batch", batch=2, grads=False,
         cfg=dict(in_channels=2, out_channels=2, img_size=[32, 16, 16], feature_size=2, hidden_size=24, mlp_dim=32,
                  num_heads=3, proj_type="perceptron", norm_name="batch", res_block=True, dropout_rate=0.0, qkv_bias=True)),
    dict(name="tiny_basic_block", batch=1, grads=False,
         cfg=dict(in_channels=1, out_channels=2, img_size=16, feature_size=2, hidden_size=16, mlp_dim=16,
                  num_heads=4, proj_type="conv", norm_name="instance", res_block=False, dropout_rate=0.0, qkv_bias=False)),
]


def hook_features(net):
    feats = {}

    def mk(name):
        def f(_m, _i, o):
            feats[name] = (o[0] if isinstance(o, tuple) else o).detach().clone()
        return f

    net.vit.register_forward_hook(mk("vit"))
    for i, b in enumerate(net.vit.blocks):
        b.register_forward_hook(mk(f"vit.blocks.{i}"))
    for n in ["encoder1", "encoder2", "encoder3", "encoder4", "decoder5", "decoder4", "decoder3", "decoder2", "out"]:
        getattr(net, n).register_forward_hook(mk(n))
    return feats


def main():
    os.makedirs(OUT, exist_ok=True)
    for case in CASES:
        torch.manual_seed(0)
        cfg = case["cfg"]
        net = UNETR(**cfg)
        # Non-trivial values everywhere: batch-norm affine and running statistics, position embedding.
        with torch.no_grad():
            for name, p in net.named_parameters():
                if "norm" in name and name.endswith("weight") and p.dim() == 1:
                    p.uniform_(0.5, 1.5)
                elif name.endswith("bias") or "position" in name:
                    p.normal_(0, 0.1)
            for name, b in net.named_buffers():
                if name.endswith("running_mean"):
                    b.normal_(0, 0.2)
                elif name.endswith("running_var"):
                    b.uniform_(0.5, 1.5)
        net.eval()
        img = cfg["img_size"] if isinstance(cfg["img_size"], list) else [cfg["img_size"]] * 3
        x = torch.randn(case["batch"], cfg["in_channels"], *img)
        feats = hook_features(net)
        io = {"input": x}
        if case["grads"]:
            out = net(x)
            proj = torch.randn_like(out)
            (out * proj).sum().backward()
            io["proj"] = proj
            for n, p in net.named_parameters():
                if p.grad is not None:
                    io["grad." + n] = p.grad.detach().clone()
        else:
            with torch.no_grad():
                out = net(x)
        io["output"] = out.detach()
        for k, v in feats.items():
            io["feat." + k] = v
        sd = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
        save_file(sd, os.path.join(OUT, case["name"] + ".weights.safetensors"))
        save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(OUT, case["name"] + ".io.safetensors"))
        with open(os.path.join(OUT, case["name"] + ".json"), "w") as f:
            json.dump(cfg, f, indent=1)
        if case["name"] == "tiny_conv_instance":
            # The same weights as a MONAI 0.7-style checkpoint: nested under "state_dict", an unused cls_token,
            # conv3/norm3 keys in blocks that do not need them, DataParallel's "module." prefix.
            old = {"module." + k: v for k, v in sd.items() if "cross_attn" not in k}
            old["module.vit.patch_embedding.cls_token"] = torch.zeros(1, 1, cfg["hidden_size"])
            f = cfg["feature_size"]
            old["module.encoder2.blocks.0.1.conv3.conv.weight"] = torch.zeros(2 * f, 2 * f, 1, 1, 1)
            torch.save({"epoch": 3, "state_dict": old}, os.path.join(OUT, case["name"] + ".monai07.pth"))
        print(case["name"], "params", sum(p.numel() for p in net.parameters()), "output", tuple(out.shape))


if __name__ == "__main__":
    main()
