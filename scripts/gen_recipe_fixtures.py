#!/usr/bin/env python3
"""MONAI's outputs for the recipe arguments (crates/unetr-data/tests/recipe.rs): CropForeground's select_fn /
margin / allow_smaller / k_divisible, NormalizeIntensity's subtrahend / divisor, Orientation's labels,
Spacing's per-key mode, and RandCropByPosNegLabel's candidate sets: the foreground and background indices
(map_binary_to_indices, with and without image_key/image_threshold) and, for each crop start MONAI can
produce, its exact probability (correct_crop_centers applied to every candidate centre).

Writes recipe.safetensors (arrays, float32) and recipe.json (the cases and the start distributions).
Run from the repo root: .venv/bin/python scripts/gen_recipe_fixtures.py   (needs torch, monai, safetensors)
"""
import json
import os
from collections import defaultdict

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import CropForeground, NormalizeIntensity, Orientation, Spacing
from monai.transforms.utils import correct_crop_centers, map_binary_to_indices
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "unetr-data", "tests", "fixtures")
rng = np.random.default_rng(1)


def crop_foreground(t, meta):
    x = np.zeros((2, 10, 9, 8), dtype=np.float32)
    x[:, 0:4, 3:7, 2:8] = rng.normal(size=(2, 4, 4, 6)) + 0.8  # touches axes 0 and 2 edges
    x[1, 7, 1, 1] = 0.3  # selected by x > 0 but not by x > 0.5
    t["fg_x"] = x
    cases = [
        ("fg_m2_strict", dict(margin=2, allow_smaller=False)),
        ("fg_m2_smaller", dict(margin=2, allow_smaller=True)),
        ("fg_m1_k4", dict(margin=1, k_divisible=4, allow_smaller=False)),
        ("fg_m130_gt05", dict(margin=[1, 3, 0], allow_smaller=False, select_fn=lambda v: v > 0.5)),
    ]
    for name, kw in cases:
        t[name] = np.asarray(CropForeground(**kw)(x.copy()))
        m = {k: v for k, v in kw.items() if k != "select_fn"}
        if "select_fn" in kw:
            m["threshold"] = 0.5
        meta["crop_foreground"].append(dict(name=name, **m))


def normalize(t, meta):
    x = t["fg_x"]
    t["norm_sub_div_cw"] = np.asarray(NormalizeIntensity(subtrahend=[1.0, -2.0], divisor=[2.0, 0.5], channel_wise=True)(x.copy()))
    t["norm_sub_nonzero"] = np.asarray(NormalizeIntensity(subtrahend=0.5, nonzero=True)(x.copy()))


def orientation(t, meta):
    img = rng.normal(size=(1, 5, 4, 3)).astype(np.float32)
    aff = np.array([[0.0, -1.5, 0.0, 10.0], [2.0, 0.0, 0.0, -3.0], [0.0, 0.0, 1.2, 4.0], [0, 0, 0, 1.0]])
    t["or_img"], t["or_affine"] = img, aff.astype(np.float32)
    for name, labels in [("or_default", None), ("or_flipped_labels", (("R", "L"), ("A", "P"), ("I", "S")))]:
        kw = {} if labels is None else dict(labels=labels)
        out = Orientation(axcodes="RAS", **kw)(MetaTensor(torch.tensor(img), affine=torch.tensor(aff)))
        t[name] = out.numpy()
        t[name + "_affine"] = np.asarray(out.affine, dtype=np.float32)


def spacing(t, meta):
    aff = np.diag([1.0, 1.2, 2.5, 1.0])
    img = rng.normal(size=(1, 11, 9, 6)).astype(np.float32)
    t["spn_img"] = img
    out = Spacing(pixdim=(1.5, 1.5, 2.0), mode="nearest")(MetaTensor(torch.tensor(img), affine=torch.tensor(aff)))
    t["spn_out"] = out.numpy()


def pos_neg(t, meta):
    """Candidate indices and the exact distribution of crop starts MONAI draws from."""
    image = np.zeros((1, 12, 10, 9), dtype=np.float32)
    image[0, 2:11, 1:9, 1:8] = rng.uniform(0.1, 1.0, size=(9, 8, 7))  # the body; air is 0
    label = np.zeros((1, 12, 10, 9), dtype=np.float32)
    label[0, 4:7, 3:6, 2:5] = 1
    label[0, 8, 6, 6] = 2
    t["pn_image"], t["pn_label"] = image, label
    shape = label.shape[1:]
    for tag, img in [("with_image", image), ("label_only", None)]:
        fg, bg = map_binary_to_indices(torch.tensor(label), None if img is None else torch.tensor(img), 0.0)
        fg, bg = np.asarray(fg), np.asarray(bg)
        t[f"pn_fg_{tag}"], t[f"pn_bg_{tag}"] = fg.astype(np.float32), bg.astype(np.float32)
        for roi, allow in [((6, 5, 4), False), ((14, 5, 4), True)]:
            sz = tuple(min(r, s) for r, s in zip(roi, shape))
            for pos, neg in [(1.0, 1.0), (1.0, 3.0)]:
                ratio = pos / (pos + neg)
                prob = defaultdict(float)
                for indices, w in [(fg, ratio), (bg, 1 - ratio)]:
                    for i in indices:
                        c = np.unravel_index(int(i), shape)
                        centre = correct_crop_centers(list(c), roi, shape, allow)
                        start = tuple(int(centre[a]) - sz[a] // 2 for a in range(3))
                        prob[start] += w / len(indices)
                meta["pos_neg"].append(dict(indices=tag, roi=list(roi), allow_smaller=allow, pos=pos, neg=neg,
                                            starts=[[list(k), v] for k, v in sorted(prob.items())]))


def main():
    os.makedirs(OUT, exist_ok=True)
    t, meta = {}, {"crop_foreground": [], "pos_neg": []}
    crop_foreground(t, meta)
    normalize(t, meta)
    orientation(t, meta)
    spacing(t, meta)
    pos_neg(t, meta)
    t.update(inversion())
    save_file({k: torch.tensor(np.array(v, dtype=np.float32)).contiguous() for k, v in t.items()}, os.path.join(OUT, "recipe.safetensors"))
    with open(os.path.join(OUT, "recipe.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print("written", os.path.normpath(OUT))




def inversion():
    """MONAI's inverse of Spacing on probabilities (Invertd with the image's applied Spacing, bilinear),
    then the argmax (AsDiscrete): what a prediction on a resampled grid becomes on the input grid."""
    from monai.transforms import Compose, Invertd, Spacingd

    aff = np.diag([1.0, 1.2, 2.5, 1.0])
    aff[:3, 3] = [3.0, -2.0, 1.0]
    img = rng.normal(size=(1, 13, 11, 7)).astype(np.float32)
    pre = Compose([Spacingd(keys="image", pixdim=(1.5, 1.5, 2.0), mode="bilinear")])
    d = pre({"image": MetaTensor(torch.tensor(img), affine=torch.tensor(aff))})
    shape = d["image"].shape[1:]
    grid = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    logits = np.stack([np.sin(3 * grid[0] + grid[1]), np.cos(2 * grid[1] - grid[2]), grid[0] * grid[2] * 2 - 0.5]).astype(np.float32)
    probs = torch.softmax(torch.tensor(logits), 0)
    d["pred"] = MetaTensor(probs, affine=d["image"].affine, applied_operations=d["image"].applied_operations)
    inv = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False)(d)
    t = {"inv_img": img, "inv_probs": probs.numpy(), "inv_back": inv["pred"].numpy(), "inv_affine": aff.astype(np.float32)}
    return t


if __name__ == "__main__":
    main()
