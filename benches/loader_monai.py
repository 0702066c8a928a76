"""MONAI's CacheDataset + DataLoader on the same files and transforms as `cargo xtask bench loader`.

Usage: python benches/loader_monai.py DATASET_JSON BATCHES WORKERS
Prints one JSON line: cache_s (CacheDataset build), batches_per_s, crops_per_s over BATCHES batches after one
warm-up batch. The transforms are the research recipe's (see docs/benchmarks.md).
"""
import json, sys, time, os
import torch
from monai import transforms as T
from monai.data import CacheDataset, DataLoader, load_decathlon_datalist

js, batches, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(max(1, os.cpu_count() or 1))
files = load_decathlon_datalist(js, True, "training")
k = ["image", "label"]
tr = T.Compose([
    T.LoadImaged(keys=k), T.EnsureChannelFirstd(keys=k),
    T.Orientationd(keys=k, axcodes="RAS"),
    T.Spacingd(keys=k, pixdim=(1.5, 1.5, 2.0), mode=("bilinear", "nearest")),
    T.ScaleIntensityRanged(keys=["image"], a_min=-175, a_max=250, b_min=0.0, b_max=1.0, clip=True),
    T.CropForegroundd(keys=k, source_key="image"),
    T.RandCropByPosNegLabeld(keys=k, label_key="label", spatial_size=(96, 96, 96), pos=1, neg=1, num_samples=4),
    T.RandFlipd(keys=k, spatial_axis=[0], prob=0.2), T.RandFlipd(keys=k, spatial_axis=[1], prob=0.2), T.RandFlipd(keys=k, spatial_axis=[2], prob=0.2),
    T.RandRotate90d(keys=k, prob=0.2, max_k=3),
    T.RandScaleIntensityd(keys="image", factors=0.1, prob=0.1), T.RandShiftIntensityd(keys="image", offsets=0.1, prob=0.1),
])
t0 = time.perf_counter()
ds = CacheDataset(data=files, transform=tr, cache_rate=1.0, num_workers=workers, progress=False)
cache_s = time.perf_counter() - t0
dl = DataLoader(ds, batch_size=1, shuffle=True, num_workers=workers, persistent_workers=workers > 0)
it = iter(dl)
def nxt():
    global it
    try:
        return next(it)
    except StopIteration:
        it = iter(dl)
        return next(it)
b = nxt()  # warm-up (worker start)
crops = 0
t0 = time.perf_counter()
for _ in range(batches):
    b = nxt()
    crops += b["image"].shape[0]
dt = time.perf_counter() - t0
print(json.dumps({"cache_s": cache_s, "batches_per_s": batches / dt, "crops_per_s": crops / dt, "crop_shape": list(b["image"].shape)}))
