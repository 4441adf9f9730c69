#!/usr/bin/python3
"""Peer baseline for fetalhc timings: a plain HC18-style U-Net in PyTorch (CPU, random weights).

Times the same path as `fetalhc bench` (PNG on disk -> HC in mm): decode, network, fit.
  /usr/bin/python3 bench/peer_unet.py --images IMG.png [IMG2.png ...] --runs 30 --threads 2
  /usr/bin/python3 bench/peer_unet.py --folder DIR --limit 100 --threads 2
Prints JSON. Needs Debian's python3-torch, python3-opencv and python3-numpy (apt), hence /usr/bin/python3.
"""
import argparse, glob, json, math, os, resource, statistics, sys, time

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

IN_H, IN_W = 216, 320  # network input, rows x columns


def block(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """4 levels down and up, 32-64-128-256 channels, 512 at the bottleneck, bilinear up + concat."""

    def __init__(self, base=32):
        super().__init__()
        ch = [base * 2 ** i for i in range(5)]  # 32, 64, 128, 256, 512
        self.down = nn.ModuleList([block(1, ch[0])] + [block(ch[i], ch[i + 1]) for i in range(4)])
        self.up = nn.ModuleList([block(ch[i + 1] + ch[i], ch[i]) for i in reversed(range(4))])
        self.head = nn.Conv2d(ch[0], 1, 1)

    def forward(self, x):
        skips = []
        for i, level in enumerate(self.down):
            x = level(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for level in self.up:
            s = skips.pop()
            x = F.interpolate(x, size=s.shape[2:], mode="bilinear", align_corners=False)
            x = level(torch.cat([x, s], 1))
        return torch.sigmoid(self.head(x))


def ramanujan2(a, b):
    """Ellipse perimeter from the semi-axes (Ramanujan's second approximation)."""
    h = ((a - b) / (a + b)) ** 2
    return math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))


def measure(model, path, pixel_mm):
    """One image, file -> HC; returns (hc_mm, {stage: ms})."""
    t0 = time.perf_counter()
    img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise SystemExit(f"cannot read {path}")
    t1 = time.perf_counter()
    x = cv2.resize(img, (IN_W, IN_H), interpolation=cv2.INTER_AREA).astype(np.float32)
    x = (x - x.mean()) / (x.std() + 1e-6)
    with torch.inference_mode():
        prob = model(torch.from_numpy(x)[None, None])[0, 0].numpy()
    mask = (prob > 0.5).astype(np.uint8)
    t2 = time.perf_counter()
    mask = cv2.resize(mask, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea) if contours else None
    if contour is None or len(contour) < 5:
        # Random weights can give an empty or tiny mask: fit the image border instead, so that the
        # fit stage always runs and is timed (the HC is then meaningless; only the time counts).
        hh, ww = img.shape
        contour = np.array([[0, 0], [ww - 1, 0], [ww - 1, hh - 1], [0, hh - 1], [ww // 2, 0]],
                           np.int32).reshape(-1, 1, 2)
    (_, _), (d1, d2), _ = cv2.fitEllipse(contour)
    hc = ramanujan2(d1 / 2, d2 / 2) * pixel_mm
    t3 = time.perf_counter()
    ms = {"decode": (t1 - t0) * 1e3, "network": (t2 - t1) * 1e3, "fit": (t3 - t2) * 1e3,
          "total": (t3 - t0) * 1e3}
    return hc, ms


def medians(times):
    return {k: statistics.median(t[k] for t in times) for k in times[0]}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", nargs="+", metavar="FILE", help="time each image: 3 warm-ups, then --runs")
    src.add_argument("--folder", metavar="DIR", help="one pass over the folder's images, one after another")
    p.add_argument("--limit", type=int, default=0, help="folder: first N images in name order (0 = all)")
    p.add_argument("--runs", type=int, default=30, help="timed runs per image (--images)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch and OpenCV")
    p.add_argument("--pixel-size", type=float, default=0.1, help="mm per pixel (default 0.1)")
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    cv2.setNumThreads(a.threads)
    torch.manual_seed(0)
    model = UNet().eval()
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(),
           "input_hw": [IN_H, IN_W], "parameters": sum(t.numel() for t in model.parameters())}

    if a.images:
        out["images"] = []
        for path in a.images:
            for _ in range(3):
                measure(model, path, a.pixel_size)
            runs = [measure(model, path, a.pixel_size) for _ in range(a.runs)]
            med = medians([ms for _, ms in runs])
            out["images"].append({"image": path, "runs": a.runs, "hc_mm": runs[-1][0], "median_ms": med,
                                  "images_per_s": 1e3 / med["total"]})
    else:
        files = sorted(f for f in glob.glob(os.path.join(a.folder, "*.png"))
                       if not f.endswith(("_Annotation.png", "_Mask.png")))
        files = files[:a.limit] if a.limit > 0 else files
        if not files:
            raise SystemExit(f"no images in {a.folder}")
        t0 = time.perf_counter()
        times = [measure(model, f, a.pixel_size)[1] for f in files]
        secs = time.perf_counter() - t0
        out["folder"] = {"folder": a.folder, "images": len(files), "seconds": secs,
                         "images_per_s": len(files) / secs, "median_ms": medians(times)}

    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
