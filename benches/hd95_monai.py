#!/usr/bin/env python3
"""MONAI side of `cargo xtask bench hd95`: HausdorffDistanceMetric(percentile=95) per class on the same
volumes, timed. Usage: hd95_monai.py VOLUMES.safetensors SPACING_JSON -> one JSON line on stdout:
{"seconds": wall time of compute_hausdorff_distance, "hd95": [per class]}.
"""
import json
import os
import sys
import time

import torch
from monai.metrics import compute_hausdorff_distance
from monai.networks.utils import one_hot
from safetensors.torch import load_file

torch.set_num_threads(int(os.environ.get("RAYON_NUM_THREADS", os.cpu_count() or 1)))
t = load_file(sys.argv[1])
spacing = json.loads(sys.argv[2])
pred, label = t["pred"].long(), t["label"].long()
k = int(max(pred.max(), label.max())) + 1
p1, l1 = one_hot(pred[None, None], k), one_hot(label[None, None], k)
t0 = time.perf_counter()
hd = compute_hausdorff_distance(p1, l1, include_background=False, percentile=95, spacing=spacing)
secs = time.perf_counter() - t0
print(json.dumps({"seconds": secs, "hd95": [None if v != v else float(v) for v in hd.reshape(-1).tolist()]}))
