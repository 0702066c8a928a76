#!/usr/bin/env python3
"""NIfTI reader fixtures for crates/unetr-data/tests, written by nibabel (what MONAI's LoadImage uses).

Per case NAME.nii[.gz] plus NAME.expect.safetensors with nibabel's view: "data" (get_fdata(): scaled, array
indexed [i, j, k(, c)]), "affine" (img.affine, float64 4x4) and "zooms".
Run from the repo root: python scripts/gen_data_fixtures.py   (needs nibabel, numpy, torch, safetensors)
"""
import os

import nibabel as nib
import numpy as np
import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "unetr-data", "tests", "fixtures")
rng = np.random.default_rng(0)


def rot(ax, deg):
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    m = np.eye(3)
    i, j = [(1, 2), (0, 2), (0, 1)][ax]
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def case(name, arr, affine, dtype, slope=None, inter=None, qform_only=False, big_endian=False):
    hdr = nib.Nifti1Header()
    if big_endian:
        hdr = hdr.as_byteswapped(">")
    img = nib.Nifti1Image(arr, affine, hdr)
    img.set_data_dtype(np.dtype(dtype).newbyteorder(">" if big_endian else "<"))
    if qform_only:
        img.set_qform(affine, code=1)
        img.set_sform(None, code=0)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    path = os.path.join(OUT, name)
    nib.save(img, path)
    back = nib.load(path)
    data = np.asarray(back.get_fdata(), dtype=np.float32)
    save_file({"data": torch.from_numpy(np.ascontiguousarray(data)),
               "affine": torch.from_numpy(np.ascontiguousarray(back.affine, dtype=np.float64)),
               "zooms": torch.tensor([float(z) for z in back.header.get_zooms()[:3]], dtype=torch.float64)},
              os.path.join(OUT, name.split(".")[0] + ".expect.safetensors"))


def transforms():
    """MONAI transform outputs on a small two-channel volume (channel-first arrays)."""
    from monai.transforms import CropForeground, NormalizeIntensity, Rotate90, ScaleIntensityRange

    x = np.zeros((2, 9, 8, 7), dtype=np.float32)
    x[:, 2:6, 3:7, 1:5] = rng.normal(size=(2, 4, 4, 4)) * 3 + 1
    x[1, 1, 1, 1] = 2.5
    t = {"x": x.copy()}  # some MONAI transforms work in place on numpy input: each gets a copy
    t["crop_fg_m1"] = np.asarray(CropForeground(margin=1)(x.copy()))
    t["crop_fg_m0"] = np.asarray(CropForeground(margin=0)(x.copy()))
    t["norm"] = np.asarray(NormalizeIntensity()(x.copy()))
    t["norm_nonzero_cw"] = np.asarray(NormalizeIntensity(nonzero=True, channel_wise=True)(x.copy()))
    t["rot_k1_01"] = np.asarray(Rotate90(k=1, spatial_axes=(0, 1))(x.copy()))
    t["rot_k3_12"] = np.asarray(Rotate90(k=3, spatial_axes=(1, 2))(x.copy()))
    t["rot_k2_02"] = np.asarray(Rotate90(k=2, spatial_axes=(0, 2))(x.copy()))
    t["scale"] = np.asarray(ScaleIntensityRange(a_min=-2.0, a_max=4.0, b_min=0.0, b_max=1.0, clip=True)(x.copy()))
    # Spacing on an RAS grid of spacing (1.0, 1.2, 2.5): image bilinear, label nearest.
    from monai.data import MetaTensor
    from monai.transforms import Spacing
    aff = np.diag([1.0, 1.2, 2.5, 1.0])
    aff[:3, 3] = [-4.0, 3.0, 10.0]
    img = rng.normal(size=(1, 11, 9, 6)).astype(np.float32)
    lab = rng.integers(0, 4, size=(1, 11, 9, 6)).astype(np.float32)
    t["sp_img"], t["sp_lab"] = img, lab
    out_i = Spacing(pixdim=(1.5, 1.5, 2.0), mode="bilinear")(MetaTensor(torch.tensor(img), affine=torch.tensor(aff)))
    out_l = Spacing(pixdim=(1.5, 1.5, 2.0), mode="nearest")(MetaTensor(torch.tensor(lab), affine=torch.tensor(aff)))
    t["sp_img_out"], t["sp_lab_out"] = out_i.numpy(), out_l.numpy()
    t["sp_affine_out"] = np.asarray(out_i.affine, dtype=np.float32)
    save_file({k: torch.tensor(np.array(v, dtype=np.float32)).contiguous() for k, v in t.items()},
              os.path.join(OUT, "transforms.safetensors"))


def main():
    os.makedirs(OUT, exist_ok=True)
    shape = (7, 6, 5)
    ras = np.diag([1.0, 1.0, 1.0, 1.0])
    ras[:3, 3] = [-3, -2.5, -2]
    case("u8_ras.nii", rng.integers(0, 255, shape).astype(np.uint8), ras, np.uint8)
    a = np.eye(4)
    a[:3, :3] = rot(2, 30) @ rot(0, 10) @ np.diag([0.8, 1.2, 2.5])
    a[:3, 3] = [10, -20, 5]
    case("i16_scaled_qform.nii.gz", rng.integers(-300, 300, shape).astype(np.int16), a, np.int16, slope=0.5, inter=-10.0,
         qform_only=True)
    lps = np.diag([-1.5, -1.5, 2.0, 1.0])
    case("u16_lps.nii.gz", rng.integers(0, 60000, shape).astype(np.uint16), lps, np.uint16)
    case("i32.nii.gz", rng.integers(-100000, 100000, shape).astype(np.int32), ras, np.int32)
    case("f64_big_endian.nii", rng.normal(size=shape), ras, np.float64, big_endian=True)
    case("f32_4d.nii.gz", rng.normal(size=shape + (2,)).astype(np.float32), lps, np.float32)
    case("i8.nii.gz", rng.integers(-100, 100, shape).astype(np.int8), ras, np.int8)
    transforms()
    print("fixtures written to", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
