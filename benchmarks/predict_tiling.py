"""Tiled prediction against the bare model forward on the same tiles, and its peak memory.

Speed: a 4096 x 4096 image and a 256^3 volume predicted by ``matseg.deploy`` (256 px tiles,
overlap 0.25, Gaussian blending, batch 8, bf16 + channels_last as a CPU job runs) against the bare
forward passes of exactly the same tiles in the same batches (no cutting, blending or writing).
Goal: tiling and stitching overhead at most 10%.

Memory: predicting 1024^2, 2048^2 and 4096^2 8-bit grey images for an RGB model, each in a
fresh process after a warm-up on one band of it, the image kept raw and normalised tile by tile
as `matseg predict` does: NumPy's working arrays (traced; one column group of one band) and the
growth of the process RSS (sampled every 2 ms) above what it held before, the input and
output arrays included there; goal: independent of the input size.

    python benchmarks/predict_tiling.py            # about 4 minutes on a 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import tifffile
import torch

from matseg.datasets.readers import match_channels, normalisation
from matseg.deploy.sliding import predict_tiled, tile_grid
from matseg.training import predict_probabilities

PATCH, OVERLAP, BATCH, CLASSES = 256, 0.25, 8, 3


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return smp.Unet("resnet18", encoder_weights=None, classes=CLASSES).eval()


@torch.no_grad()
def bare_seconds(net: torch.nn.Module, batches: list[int], channels: int = 3) -> float:
    """Forward passes only: the same number of tiles in the same batch sizes."""
    net = net.to(memory_format=torch.channels_last)
    x = {n: torch.randn(n, channels, PATCH, PATCH) for n in set(batches)}
    start = time.perf_counter()
    for n in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            predict_probabilities(net, x[n], True)
    seconds = time.perf_counter() - start
    net.to(memory_format=torch.contiguous_format)
    return seconds


def image_batches(h: int, w: int) -> list[int]:
    tiles = tile_grid(h, w, PATCH, OVERLAP)
    out = []
    for y in sorted({y for y, _ in tiles}):
        n = sum(1 for yy, _ in tiles if yy == y)
        out += [BATCH] * (n // BATCH) + ([n % BATCH] if n % BATCH else [])
    return out


def image_benchmark(size: int, repeats: int = 3) -> None:
    """Tiled and bare runs interleaved ``repeats`` times; the fastest of each is compared
    (the usual way to take scheduling noise out of a timing on a busy 2-core machine)."""
    net = model()
    image = np.random.default_rng(0).normal(size=(3, size, size)).astype(np.float32)
    predict_tiled(net, image[:, :512, :512], CLASSES, PATCH, OVERLAP, BATCH, "bf16-mixed", True)
    batches = image_batches(size, size)
    tiled, bare = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        predict_tiled(net, image, CLASSES, PATCH, OVERLAP, BATCH, "bf16-mixed", True)
        tiled.append(time.perf_counter() - start)
        bare.append(bare_seconds(net, batches))
    ratios = [t / b - 1 for t, b in zip(tiled, bare, strict=True)]
    print(f"{size}x{size} image: {sum(batches)} tiles; fastest of {repeats}: tiled "
          f"{min(tiled):.1f} s, bare forward {min(bare):.1f} s; overhead "
          f"{100 * (min(tiled) / min(bare) - 1):+.1f}% (goal <= 10%; per pair "
          + ", ".join(f"{100 * r:+.1f}%" for r in ratios) + ")")  # fmt: skip


def volume_benchmark(size: int, repeats: int = 3) -> None:
    from matseg.deploy.predict import Tiling, predict_volume_array

    net = model()
    volume = np.random.default_rng(0).integers(0, 255, size=(size, size, size), dtype=np.uint8)
    tiling = Tiling(PATCH, OVERLAP, BATCH, "bf16-mixed")
    pairs = []
    for _ in range(repeats):  # interleaved, as for the image
        with tempfile.TemporaryDirectory() as tmp:
            out = tifffile.memmap(Path(tmp) / "m.tif", shape=volume.shape, dtype=np.uint8)
            start = time.perf_counter()
            tiles = predict_volume_array(
                net, volume, CLASSES, 3, tiling, True, "zscore", out_mask=out
            )
            tiled = time.perf_counter() - start
            del out
        batches = [BATCH] * (tiles // BATCH) + ([tiles % BATCH] if tiles % BATCH else [])
        pairs.append((tiled, bare_seconds(net, batches)))
    tiled, bare = min(t for t, _ in pairs), min(b for _, b in pairs)
    each = ", ".join(f"{100 * (t / b - 1):+.1f}%" for t, b in pairs)
    print(f"{size}^3 volume: {tiles} tiles; fastest of {repeats}: tiled {tiled:.1f} s, bare "
          f"forward {bare:.1f} s; overhead {100 * (tiled / bare - 1):+.1f}% (goal <= 10%; per "
          f"pair {each})")  # fmt: skip


def _rss_mb() -> float:
    """The current resident memory of this process (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_peak(size: int) -> None:
    """In a fresh process: predict one size^2 image; the peak RSS above the RSS before it
    (input and output arrays already allocated), sampled every 2 ms by a thread."""
    net = model()
    # an 8-bit grey micrograph for an RGB model, kept raw as `matseg predict` keeps it: each
    # batch of tiles is normalised and given three channels on its way in
    image = np.random.default_rng(0).integers(0, 256, size=(1, size, size), dtype=np.uint8)
    norm = normalisation(image, "dtype")

    def prepare(tiles: np.ndarray) -> np.ndarray:
        return match_channels(norm.apply(tiles), 3, axis=1)

    mask = np.zeros((size, size), np.uint8)
    mask[:] = 0  # touch the pages, so they count in "before"
    # warm up on one band of the same image: the same batch sizes, so torch's buffers for each
    # batch shape (oneDNN primitives and scratchpads, tens of MB each) are held before
    warm = image[:, :PATCH, :]
    predict_tiled(net, warm, CLASSES, PATCH, OVERLAP, BATCH, "bf16-mixed", True, prepare=prepare)
    before, peak, running = _rss_mb(), [0.0], [True]

    def sample() -> None:
        while running[0]:
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    tracemalloc.start()  # NumPy's working arrays (the band), apart from torch's allocator
    predict_tiled(net, image, CLASSES, PATCH, OVERLAP, BATCH, "bf16-mixed", True, out_mask=mask,
                  prepare=prepare)  # fmt: skip
    numpy_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    running[0] = False
    sampler.join()
    print(json.dumps({"size": size, "before_mb": before, "growth_mb": peak[0] - before,
                      "numpy_mb": numpy_peak / 2**20,
                      "arrays_mb": (image.nbytes + mask.nbytes) / 2**20,
                      "float_input_mb": 3 * size * size * 4 / 2**20}))  # fmt: skip


def memory_benchmark(sizes: list[int]) -> None:
    print("memory while predicting (fresh process each, after a warm-up prediction):")
    for size in sizes:
        res = subprocess.run([sys.executable, __file__, "--child", str(size)], check=True,
                             capture_output=True, text=True)  # fmt: skip
        row = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"  {size}x{size}: 8-bit grey input + mask {row['arrays_mb']:.0f} MB (held before; "
              f"the float32 RGB input the model sees would be {row['float_input_mb']:.0f} MB); "
              f"NumPy working arrays {row['numpy_mb']:.0f} MB (one column group of one band); "
              f"process RSS growth {row['growth_mb']:.0f} MB")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--image", type=int, default=4096)
    parser.add_argument("--volume", type=int, default=256)
    args = parser.parse_args()
    if args.child:
        child_peak(args.child)
        return 0
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; resnet18-UNet, "
          f"{PATCH} px tiles, overlap {OVERLAP}, batch {BATCH}, bf16 + channels_last")  # fmt: skip
    image_benchmark(args.image)
    volume_benchmark(args.volume)
    memory_benchmark([1024, 2048, 4096])
    return 0


if __name__ == "__main__":
    sys.exit(main())
