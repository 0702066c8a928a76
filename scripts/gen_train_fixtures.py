#!/usr/bin/env python3
"""MONAI reference values for crates/unetr-train/tests: DiceCELoss / DiceLoss values and gradients, and
sliding_window_inference outputs. Run from the repo root: python scripts/gen_train_fixtures.py
"""
import json
import os

import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss, DiceLoss
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "unetr-train", "tests", "fixtures")
torch.manual_seed(0)


def losses():
    t = {}
    meta = []
    logits = torch.randn(2, 4, 5, 6, 3) * 2
    labels = torch.randint(0, 4, (2, 1, 5, 6, 3)).float()
    labels[1][labels[1] == 2] = 0  # a class absent from one sample
    t["logits"], t["labels"] = logits, labels
    combos = [
        dict(include_background=True, squared_pred=False, smooth_nr=1e-5, smooth_dr=1e-5, lambda_dice=1.0, lambda_ce=1.0),
        dict(include_background=True, squared_pred=True, smooth_nr=0.0, smooth_dr=1e-6, lambda_dice=1.0, lambda_ce=1.0),
        dict(include_background=False, squared_pred=False, smooth_nr=1e-5, smooth_dr=1e-5, lambda_dice=0.7, lambda_ce=0.3),
        # batch Dice and class weights (DiceCELoss passes `weight` to both terms)
        dict(include_background=True, squared_pred=True, smooth_nr=0.0, smooth_dr=1e-6, lambda_dice=1.0, lambda_ce=1.0, batch=True),
        dict(include_background=True, squared_pred=False, smooth_nr=1e-5, smooth_dr=1e-5, lambda_dice=1.0, lambda_ce=1.0, weight=[0.5, 1.0, 2.0, 1.5]),
        dict(include_background=False, squared_pred=True, smooth_nr=0.0, smooth_dr=1e-6, lambda_dice=0.6, lambda_ce=1.4, batch=True,
             weight=[0.2, 1.0, 3.0, 0.5]),
    ]
    for i, c in enumerate(combos):
        x = logits.clone().requires_grad_()
        kw = dict(c)
        if "weight" in kw:
            kw["weight"] = torch.tensor(kw["weight"])
        f = DiceCELoss(to_onehot_y=True, softmax=True, **kw)
        v = f(x, labels)
        v.backward()
        dw = kw.get("weight")
        if dw is not None and not c["include_background"]:
            dw = dw[1:]
        d = DiceLoss(to_onehot_y=True, softmax=True, include_background=c["include_background"], squared_pred=c["squared_pred"],
                     smooth_nr=c["smooth_nr"], smooth_dr=c["smooth_dr"], batch=c.get("batch", False), weight=dw)(logits, labels)
        t[f"dicece.{i}"] = v.detach().reshape(1)
        t[f"dice.{i}"] = d.detach().reshape(1)
        t[f"grad.{i}"] = x.grad
        meta.append(c)
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(OUT, "losses.safetensors"), metadata={"combos": json.dumps(meta)})


def sliding():
    t = {}
    meta = []

    def predictor(x):  # window-dependent, so blending weights matter
        m = x.mean(dim=(2, 3, 4), keepdim=True)
        return torch.cat([x - m, x * x + m], dim=1)

    for i, (shape, roi, overlap, mode, swb) in enumerate([
        ((1, 1, 11, 9, 7), (4, 5, 3), 0.5, "gaussian", 3),
        ((1, 1, 11, 9, 7), (4, 5, 3), 0.25, "constant", 2),
        ((1, 1, 5, 4, 6), (8, 8, 4), 0.5, "gaussian", 4),
    ]):
        x = torch.randn(*shape)
        y = sliding_window_inference(x, roi, swb, predictor, overlap=overlap, mode=mode)
        t[f"x.{i}"], t[f"y.{i}"] = x, y
        meta.append(dict(roi=roi, overlap=overlap, mode=mode, sw_batch=swb))
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(OUT, "sliding_window.safetensors"), metadata={"cases": json.dumps(meta)})


def metrics():
    from monai.metrics import DiceMetric, compute_hausdorff_distance
    from monai.networks.utils import one_hot

    g = torch.Generator().manual_seed(1)
    shape = (12, 10, 8)
    zz, yy, xx = torch.meshgrid(*[torch.arange(n).float() for n in shape], indexing="ij")
    def blobs(shift):
        lab = torch.zeros(shape)
        lab[((zz - 5 - shift) ** 2 / 9 + (yy - 4) ** 2 / 6 + (xx - 3) ** 2 / 4) <= 1] = 1
        lab[((zz - 7) ** 2 / 4 + (yy - 6 + shift) ** 2 / 4 + (xx - 5) ** 2 / 3) <= 1] = 2
        return lab
    pred, lab = blobs(1.0), blobs(0.0)
    noise = torch.rand(shape, generator=g) < 0.03
    pred[noise] = 1
    p1, l1 = one_hot(pred[None, None], 3), one_hot(lab[None, None], 3)
    hd = compute_hausdorff_distance(p1, l1, include_background=True, percentile=95)
    dm = DiceMetric(include_background=True, reduction="none")(p1, l1)
    save_file({"pred": pred, "label": lab, "hd95": hd.reshape(-1).float(), "dice": dm.reshape(-1).float()}, os.path.join(OUT, "metrics.safetensors"),
              metadata={"note": json.dumps("HausdorffDistance percentile 95 and DiceMetric, include_background=True")})


def hd95_cases():
    """MONAI's HausdorffDistanceMetric(percentile=95) per class with voxel spacing: anisotropic spacing,
    a class missing from the prediction, one missing from the ground truth, one missing from both, and
    irregular random shapes; plus a larger case for the distance-transform code path."""
    from monai.metrics import compute_hausdorff_distance
    from monai.networks.utils import one_hot

    g = torch.Generator().manual_seed(3)
    t, meta = {}, []
    shapes = [((14, 11, 9), (1.5, 0.8, 2.5)), ((20, 17, 13), (0.7, 0.7, 3.0)), ((33, 30, 21), (1.0, 1.0, 1.0))]
    for i, (shape, spacing) in enumerate(shapes):
        k = 5
        grid = torch.meshgrid(*[torch.arange(n).float() for n in shape], indexing="ij")

        def ellipsoid(c, r):
            return sum(((g_ - c_) / r_) ** 2 for g_, c_, r_ in zip(grid, c, r)) <= 1

        lab, pred = torch.zeros(shape), torch.zeros(shape)
        for cls in (1, 2, 3):
            c = [float(torch.rand(1, generator=g)) * n * 0.6 + n * 0.2 for n in shape]
            r = [float(torch.rand(1, generator=g)) * n * 0.2 + 2 for n in shape]
            lab[ellipsoid(c, r)] = cls
            c2 = [c_ + float(torch.randn(1, generator=g)) for c_ in c]
            r2 = [r_ * (0.8 + 0.4 * float(torch.rand(1, generator=g))) for r_ in r]
            pred[ellipsoid(c2, r2)] = cls
        pred[torch.rand(shape, generator=g) < 0.01] = 1  # speckles: the 95th percentile ignores a few
        if i == 0:
            lab[lab == 3] = 0  # class 3 only in the prediction
            lab[-4:-1, -3:, -3:] = 4  # class 4 only in the label
        p1, l1 = one_hot(pred[None, None], k), one_hot(lab[None, None], k)
        hd = compute_hausdorff_distance(p1, l1, include_background=True, percentile=95, spacing=list(spacing))
        t[f"pred.{i}"], t[f"label.{i}"], t[f"hd95.{i}"] = pred, lab, hd.reshape(-1).float()
        meta.append(dict(shape=list(shape), spacing=list(spacing), classes=k))
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(OUT, "hd95.safetensors"), metadata={"cases": json.dumps(meta)})


def adamw():
    """torch.optim.AdamW over 4 steps with given gradients (lr, betas, eps, weight decay not PyTorch's defaults),
    the weights after each step; a gradient that is absent in step 2 (frozen that step)."""
    g = torch.Generator().manual_seed(7)
    w0 = {"a": torch.randn(3, 5, generator=g), "b": torch.randn(7, generator=g)}
    grads = [{k: torch.randn(v.shape, generator=g) * (1 + i) for k, v in w0.items()} for i in range(4)]
    params = {k: torch.nn.Parameter(v.clone()) for k, v in w0.items()}
    opt = torch.optim.AdamW(params.values(), lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)
    t = {f"w0.{k}": v for k, v in w0.items()}
    for i, gs in enumerate(grads):
        opt.zero_grad(set_to_none=True)
        for k, p in params.items():
            if not (i == 2 and k == "b"):
                p.grad = gs[k].clone()
                t[f"g{i}.{k}"] = gs[k]
        opt.step()
        for k, p in params.items():
            t[f"w{i + 1}.{k}"] = p.detach().clone()
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(OUT, "adamw.safetensors"),
              metadata={"config": json.dumps(dict(lr=3e-3, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.05))})


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    losses()
    sliding()
    metrics()
    hd95_cases()
    adamw()
    print("fixtures written to", os.path.normpath(OUT))
