"""MONAI's recipe on the data, transforms, model, optimiser, schedule and step budget of a training config of
ours (`cargo xtask colin27` passes the effective config as JSON). The transform list is translated entry by
entry to MONAI's dictionary transforms (same names, same arguments).

Usage: python benches/colin27_monai.py CONFIG_JSON OUT_JSON
Writes OUT_JSON: per-class validation Dice (MONAI's DiceMetric, include_background=False) at every validation
step, the final one, and the training time.
"""
import json, math, sys, time, os
import numpy as np
import torch
from monai import transforms as T
from monai.data import CacheDataset, DataLoader, load_decathlon_datalist, decollate_batch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.nets import UNETR
from monai.utils import set_determinism

cfg = json.load(open(sys.argv[1]))
out_path = sys.argv[2]
torch.set_num_threads(os.cpu_count() or 1)
seed = cfg["output"]["seed"]
set_determinism(seed=seed)
js = cfg["data"]["dataset"]
meta = json.load(open(js))
n_classes = max(int(k) for k in meta["labels"]) + 1
train_files = load_decathlon_datalist(js, True, "training")
val_files = load_decathlon_datalist(js, True, "validation")
K = ["image", "label"]
SPATIAL = {"Orientation", "Spacing", "CropForeground", "SpatialPad", "RandCropByPosNegLabel", "RandSpatialCrop", "RandFlip", "RandRotate90"}


def monai_transform(spec):
    """Our config entry -> MONAI's dictionary transform: the argument names are MONAI's already."""
    spec = {k: v for k, v in spec.items() if v is not None}
    name = spec.pop("name")
    keys = K if name in SPATIAL else ["image"]
    if name == "Orientation":
        spec["labels"] = tuple(tuple(p) for p in spec["labels"])
    if name == "Spacing" and isinstance(spec["mode"], list):
        spec["mode"] = tuple(spec["mode"])
    if name == "CropForeground":
        sf = spec.pop("select_fn")
        spec["select_fn"] = (lambda x: x > 0) if sf == "is_positive" else (lambda x, t=sf["greater_than"]: x > t)
    if name == "RandFlip" and isinstance(spec["spatial_axis"], int):
        spec["spatial_axis"] = [spec["spatial_axis"]]
    if name in ("RandScaleIntensity", "RandShiftIntensity"):
        k = "factors" if name == "RandScaleIntensity" else "offsets"
        if isinstance(spec[k], list):
            spec[k] = tuple(spec[k])
    return getattr(T, name + "d")(keys=keys, **spec)


pipeline = cfg["transforms"]["pipeline"]
first_random = next(i for i, s in enumerate(pipeline) if s["name"].startswith("Rand"))
load = [T.LoadImaged(keys=K), T.EnsureChannelFirstd(keys=K)]
train_tf = T.Compose(load + [monai_transform(s) for s in pipeline])
val_tf = T.Compose(load + [monai_transform(s) for s in pipeline[:first_random]])
train_ds = CacheDataset(train_files, train_tf, cache_rate=1.0, num_workers=0, progress=False)
val_ds = CacheDataset(val_files, val_tf, cache_rate=1.0, num_workers=0, progress=False)
o, m, v = cfg["optim"], cfg["model"], cfg["validation"]
train_loader = DataLoader(train_ds, batch_size=o["batch_size"], shuffle=True, num_workers=0)
roi = tuple(cfg["transforms"]["roi"])
model = UNETR(in_channels=1, out_channels=n_classes, img_size=roi, feature_size=m["feature_size"], hidden_size=m["hidden_size"],
              mlp_dim=m["mlp_dim"], num_heads=m["num_heads"], proj_type=m["proj_type"], norm_name=m["norm_name"],
              res_block=m["res_block"], dropout_rate=m["dropout_rate"], qkv_bias=m["qkv_bias"])
assert m["num_layers"] == 12 and m["patch_size"] == [16, 16, 16], "MONAI's UNETR has 12 layers and 16^3 patches"
lo = o["loss"]
assert lo["name"] == "dice_ce", "the MONAI side runs DiceCELoss"
loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=lo["include_background"], squared_pred=lo["squared_pred"],
                     smooth_nr=lo["smooth_nr"], smooth_dr=lo["smooth_dr"], lambda_dice=lo["lambda_dice"], lambda_ce=lo["lambda_ce"],
                     batch=lo["batch"], weight=None if lo.get("weight") is None else torch.tensor(lo["weight"]),
                     label_smoothing=lo["label_smoothing"])
a = o["adamw"]
opt = torch.optim.AdamW(model.parameters(), lr=a["lr"], betas=(a["beta1"], a["beta2"]), eps=a["eps"], weight_decay=a["weight_decay"])


def lr_at(step):  # the same warm-up + cosine as ours (unetr_train::optim::warmup_cosine)
    w, total, base, lo_ = o["warmup_steps"], o["steps"], a["lr"], o["min_lr"]
    if step < w:
        return base * (step + 1) / w
    t = min((step - w) / max(total - w, 1), 1.0)
    return lo_ + (base - lo_) * 0.5 * (1 + math.cos(math.pi * t))


dice = DiceMetric(include_background=v["include_background"], reduction="mean_batch", get_not_nans=False)


def validate():
    model.eval()
    dice.reset()
    with torch.no_grad():
        for b in DataLoader(val_ds, batch_size=1):
            logits = sliding_window_inference(b["image"], roi, v["sw_batch"], model, overlap=v["overlap"], mode=v["blend"])
            pred = torch.argmax(logits, 1, keepdim=True)
            onehot = lambda x: torch.nn.functional.one_hot(x[:, 0].long(), n_classes).permute(0, 4, 1, 2, 3).float()
            dice(y_pred=onehot(pred), y=onehot(b["label"]))
    per = dice.aggregate().tolist()
    model.train()
    return per


step, t0, history = 0, time.perf_counter(), []
model.train()
while step < o["steps"]:
    for batch in train_loader:
        if step >= o["steps"]:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = loss_fn(model(batch["image"]), batch["label"])
        opt.zero_grad()
        loss.backward()
        if o["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o["grad_clip"])
        opt.step()
        step += 1
        if step % 20 == 0:
            print(f"monai step {step}/{o['steps']} loss {loss.item():.4f} {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
        if step % v["every"] == 0 or step == o["steps"]:
            per = validate()
            history.append({"step": step, "val_dice": per, "val_mean_dice": float(np.mean(per))})
            print(f"monai validation at step {step}: mean Dice {np.mean(per):.4f} {[round(x, 3) for x in per]}", file=sys.stderr, flush=True)
res = {"history": history, "final": history[-1], "seconds": time.perf_counter() - t0, "torch": torch.__version__}
import monai
res["monai"] = monai.__version__
json.dump(res, open(out_path, "w"), indent=1)
