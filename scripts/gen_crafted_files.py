#!/usr/bin/env python3
"""Writes the crafted (hostile) input files the safety tests feed to the library and the `unetr` binary.

Standard library only. Output: crates/unetr-cli/tests/fixtures/crafted/
- huge_shape.pth: a torch.save zip whose one tensor claims shape (2^20, 2^20) over a 4-element storage;
- lying_storage.pth: a tensor whose storage claims 2^30 floats while its archive entry holds 16 bytes;
- ok_small.pth: the same layout with an honest (2, 2) float tensor (the reader's control case);
- huge_voxels.nii.gz: a valid 8x8x8 NIfTI whose header says 3000 mm voxels (resampling it to 1.5 mm would
  need 2000^3 voxels per axis cube);
- lying_dims.nii: a header claiming 30000 x 30000 x 30000 voxels with no data behind it;
- truncated.nii.gz: a valid gzip-compressed volume cut in the middle.
Run from the repo root: python3 scripts/gen_crafted_files.py
"""
import gzip
import os
import struct
import zipfile

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "unetr-cli", "tests", "fixtures", "crafted")


def binunicode(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def binint(v):
    return b"J" + struct.pack("<i", v)


def tensor_pickle(name, shape, stride, storage_elems):
    """Protocol-2 pickle of {name: torch._utils._rebuild_tensor_v2(storage, 0, shape, stride, False, OrderedDict())}."""
    p = b"\x80\x02}" + binunicode(name)
    p += b"ctorch._utils\n_rebuild_tensor_v2\n"
    p += b"("  # MARK: the call's arguments
    # persistent id ('storage', FloatStorage, key '0', 'cpu', numel)
    p += b"(" + binunicode("storage") + b"ctorch\nFloatStorage\n" + binunicode("0") + binunicode("cpu") + binint(storage_elems) + b"tQ"
    p += binint(0)
    p += b"(" + b"".join(binint(d) for d in shape) + b"t"
    p += b"(" + b"".join(binint(d) for d in stride) + b"t"
    p += b"\x89"  # False
    p += b"ccollections\nOrderedDict\n)R"
    p += b"tR"  # tuple of the arguments, REDUCE
    p += b"s."  # SETITEM, STOP
    return p


def write_pth(path, pkl, data):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/data/0", data)
        z.writestr("archive/version", b"3\n")


def nifti(dims, pixdim, datatype=16, bitpix=32, data=b""):
    h = bytearray(352)
    struct.pack_into("<i", h, 0, 348)
    struct.pack_into("<8h", h, 40, 3, dims[0], dims[1], dims[2], 1, 1, 1, 1)
    struct.pack_into("<hh", h, 70, datatype, bitpix)
    struct.pack_into("<8f", h, 76, 1.0, pixdim[0], pixdim[1], pixdim[2], 1, 1, 1, 1)
    struct.pack_into("<f", h, 108, 352.0)
    struct.pack_into("<ff", h, 112, 1.0, 0.0)
    h[344:348] = b"n+1\0"
    return bytes(h) + data


def main():
    os.makedirs(OUT, exist_ok=True)
    write_pth(os.path.join(OUT, "huge_shape.pth"), tensor_pickle("w", (1 << 20, 1 << 20), (1 << 20, 1), 4), b"\0" * 16)
    write_pth(os.path.join(OUT, "lying_storage.pth"), tensor_pickle("w", (1 << 15, 1 << 15), (1 << 15, 1), 1 << 30), b"\0" * 16)
    write_pth(os.path.join(OUT, "ok_small.pth"), tensor_pickle("w", (2, 2), (2, 1), 4), struct.pack("<4f", 1, 2, 3, 4))
    vol = nifti((8, 8, 8), (3000.0, 3000.0, 3000.0), datatype=2, bitpix=8, data=bytes(range(256)) * 2)
    with gzip.GzipFile(os.path.join(OUT, "huge_voxels.nii.gz"), "wb", mtime=0) as f:
        f.write(vol)
    with open(os.path.join(OUT, "lying_dims.nii"), "wb") as f:
        f.write(nifti((30000, 30000, 30000), (1.0, 1.0, 1.0)))
    whole = gzip.compress(nifti((16, 16, 16), (1.0, 1.0, 1.0), data=b"\1" * 4 * 16 ** 3), mtime=0)
    with open(os.path.join(OUT, "truncated.nii.gz"), "wb") as f:
        f.write(whole[: len(whole) // 2])


if __name__ == "__main__":
    main()
