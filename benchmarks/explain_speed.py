"""Counterfactual heatmap speed: matseg against Captum's Occlusion on the same model and image.

ResNet50-UNet (random init; speed does not depend on the weights), a 256 x 256 micrograph crop
(nasa_super when ../shared/data is there, else a synthetic one), window 16, stride 8 (961
windows), constant (mean) fill so that the two maps are comparable, region A a central box.
Captum gets 32 perturbations per forward pass, as in the issue's measurement. Prints seconds,
the speed ratio, and the largest difference between the maps (matseg fp32 must equal Captum's).
bf16 rounding noise, summed over A, is large against the tiny changes of an untrained network's
near-uniform probabilities; ``--run RUN`` uses a trained model instead.

Every matseg arm is a first heatmap: tracing (and compiling) is inside its time. The compiled
arm starts from an empty TorchInductor cache (a fresh temporary folder); it is timed again as a
second heatmap once that cache is warm. Then where the speed comes from: one batch of 8
perturbed images through the model as it is (autocast for bf16), through its traced graph with
BatchNorm folded and weights cast once, and through the graph restricted to A's bounding box.

    python benchmarks/explain_speed.py [--size 256] [--window 16] [--stride 8] [--skip-captum]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

if __name__ == "__main__" and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    # a fresh, empty compile cache: the first compiled heatmap below is a true cold start
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="matseg-inductor-")

import numpy as np
import torch

from matseg.explain.heatmap import Heatmap, bounding_box, counterfactual_heatmap
from matseg.models import build_model
from matseg.training import predict_logits

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def micrograph(size: int) -> np.ndarray:
    path = SHARED / "nasa_super" / "images" / "spot2_0d_4.tif"
    if path.is_file():
        import tifffile

        raw = tifffile.imread(path)
        grey = raw.mean(axis=-1) if raw.ndim == 3 else raw
        crop = grey[:size, :size].astype(np.float32) / 255.0
        return np.repeat(crop[None], 3, axis=0)
    from matseg.datasets.synthetic import generate

    image, _ = generate("phases", size=size, seed=0)
    return np.repeat(image[None].astype(np.float32), 3, axis=0)


def captum_map(
    model: torch.nn.Module, image: np.ndarray, roi: np.ndarray, window: int, stride: int
) -> tuple[np.ndarray, float]:
    from captum.attr import Occlusion

    a = torch.from_numpy(roi.astype(np.float32))
    x = torch.from_numpy(image)[None]
    with torch.no_grad():
        clean = predict_logits(model, x, False).softmax(1) * a

    def f(inp: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = predict_logits(model, inp, False).softmax(1) * a
        return (out - clean).abs().sum(dim=(1, 2, 3))

    baselines = torch.from_numpy(image.mean(axis=(1, 2))).view(1, -1, 1, 1)
    start = time.perf_counter()
    attr = Occlusion(f).attribute(
        x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
        baselines=baselines, perturbations_per_eval=32,
    )  # fmt: skip
    return -attr[0, 0].numpy(), time.perf_counter() - start


def per_batch(model: torch.nn.Module, image: np.ndarray, roi: np.ndarray) -> None:
    """Seconds per batch of 8 (fastest of 3 interleaved rounds): model, folded graph, box."""
    from matseg.explain.region import BoxForward

    model = model.to(memory_format=torch.channels_last)
    x = torch.from_numpy(image)[None].repeat(8, 1, 1, 1)
    x = x.contiguous(memory_format=torch.channels_last)
    by, bx = bounding_box(roi)
    box = (by.start, by.stop, bx.start, bx.stop)
    h, w = roi.shape
    for precision in ("bf16-mixed", "32"):
        bf16 = precision == "bf16-mixed"

        def as_is(batch: torch.Tensor, bf16: bool = bf16) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model(batch)

        arms = {
            "model as is": as_is,
            "folded graph": BoxForward(model, x, (0, h, 0, w), precision),
            "box graph": BoxForward(model, x, box, precision),
        }
        best = dict.fromkeys(arms, float("inf"))
        with torch.no_grad():
            for _ in range(3):
                for name, run in arms.items():
                    run(x)
                    start = time.perf_counter()
                    run(x)
                    best[name] = min(best[name], time.perf_counter() - start)
        print(f"  {precision} per batch of 8: " + ", ".join(
            f"{name} {seconds:.3f} s ({best['model as is'] / seconds:.2f}x)"
            for name, seconds in best.items()))  # fmt: skip
    model.to(memory_format=torch.contiguous_format)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--encoder", default="resnet50")
    parser.add_argument("--skip-captum", action="store_true")
    parser.add_argument(
        "--run", type=Path, help="use this run's best trained model (3 input channels)"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.run:
        from matseg.trained import load_trained

        model = load_trained(args.run).model
        args.encoder = "trained"
    else:
        model, _ = build_model(args.encoder, "unet", 3, 3)
    model.eval()
    image = micrograph(args.size)
    roi = np.zeros((args.size, args.size), dtype=bool)
    q = args.size // 4
    roi[q : 3 * q, q : 3 * q] = True

    def heatmap(precision: str, compile: str, restrict: bool) -> Heatmap:
        return counterfactual_heatmap(
            model, image, roi, "mean", args.window, args.stride, precision=precision,
            compile=compile, restrict=restrict,  # type: ignore[arg-type]
        )  # fmt: skip

    print(f"{args.encoder}-UNet, {args.size}x{args.size}, window {args.window}, stride "
          f"{args.stride}, torch threads {torch.get_num_threads()}")  # fmt: skip
    results: dict[str, Heatmap] = {}
    arms = [
        ("bf16, box graph, eager", "bf16-mixed", "off", True),
        ("bf16, box graph compiled, empty cache", "bf16-mixed", "on", True),
        ("bf16, box graph compiled, cache warm", "bf16-mixed", "on", True),
        ("bf16, whole model", "bf16-mixed", "off", False),
        ("fp32, box graph (exact)", "32", "off", True),
        ("fp32, whole model", "32", "off", False),
    ]
    for name, precision, compile, restrict in arms:
        hm = heatmap(precision, compile, restrict)
        results[name] = hm
        print(f"  matseg {name:38s} {hm.seconds:7.1f} s  ({hm.evaluated} windows run, "
              f"{hm.skipped} out of reach, batch {hm.batch_size}, compiled {hm.compiled}, "
              f"box {hm.restricted})", flush=True)  # fmt: skip
    per_batch(model, image, roi)
    if not args.skip_captum:
        ref, seconds = captum_map(model, image, roi, args.window, args.stride)
        print(f"  captum Occlusion (fp32, eager)        {seconds:7.1f} s  (32 per forward)")
        for name, hm in results.items():
            diff = np.abs(hm.image_map - ref).max() / max(np.abs(ref).max(), 1e-12)
            corr = np.corrcoef(hm.image_map.ravel(), ref.ravel())[0, 1]
            print(f"  captum / matseg {name}: {seconds / hm.seconds:.2f}x faster; "
                  f"max |difference| / max |H| = {diff:.2e}, correlation {corr:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
