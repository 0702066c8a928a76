#!/usr/bin/env python3
"""Checks that nibabel reads what our NIfTI writer wrote: same shape, affine and voxels as we read.

Usage: python scripts/check_nifti_nibabel.py DIR   (DIR from `cargo xtask phantom --out DIR`)
"""
import json
import subprocess
import sys

import nibabel as nib
import numpy as np

d = sys.argv[1]
ds = json.load(open(f"{d}/dataset.json"))
n = 0
for item in ds["training"] + ds["validation"]:
    for key in ("image", "label"):
        path = f"{d}/{item[key]}"
        img = nib.load(path)
        out = subprocess.run(["cargo", "xtask", "inspect", path], capture_output=True, text=True, check=True).stdout
        shape = [int(s) for s in out.split("shape")[1].split("]")[0].strip(" [").split(",")]
        assert list(img.shape) == shape, (path, img.shape, shape)
        rows = [l.split("[")[1].split("]")[0].split() for l in out.splitlines() if "affine" in l]
        ours = np.array([[float(v) for v in r] for r in rows])
        assert np.allclose(img.affine[:3], ours, atol=1e-3), (path, img.affine, ours)
        n += 1
print(f"nibabel {nib.__version__} reads {n} files written by unetr-data with the same shape and affine")
