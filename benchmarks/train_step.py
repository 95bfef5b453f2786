"""matseg's training step against a plain fp32 PyTorch loop of the same model, in one run.

Throughput: images per second of ResNet50-UNet at 256x256, batch 16, for (a) a plain loop (fp32,
Adam, cross-entropy, no tricks) and (b) matseg's Lightning training step as a profile configures
it (bf16-mixed autocast with channels_last on CPU). Goal: (b) >= 1.8x (a).

Accuracy (``--iou-minutes M``), per seed, on nasa_super's manifest split, resnet18-UNet from the
same random initial weights, M minutes of wall clock each: (a) the issue's reference point, a
plain loop (Adam 1e-3, CE, batch 8, 256 px crops, bf16 autocast, last weights), optionally (b) the
same loop in fp32 (``--plain-fp32``), and (c) matseg as examples/profiles/nasa-super.json trains
(its whole training block), scored without and with the profile's test-time augmentation. Prints
the test precipitate IoU (macro over red and blue), the macro IoU and the shifted alloys' IoU,
mean +- sd over the seeds.

    python benchmarks/train_step.py                     # throughput only (about 3 minutes)
    python benchmarks/train_step.py --skip-speed --iou-minutes 8 --seeds 0 1 2   # ~55 minutes
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from matseg import metrics
from matseg.datasets.check import inspect_dataset
from matseg.datasets.dataset import MicrographDataset
from matseg.datasets.spec import load_spec
from matseg.profile import Training, load_profile
from matseg.training import RandomCrops, SegmentationModule, fit, predict

ROOT = Path(__file__).resolve().parents[1]
BATCH, SIZE, CLASSES = 16, 256, 3


def plain_step_seconds(steps: int) -> float:
    """Median seconds of one fp32 training step of the plain loop."""
    torch.manual_seed(0)
    model = smp.Unet("resnet50", encoder_weights=None, classes=CLASSES).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, y = torch.randn(BATCH, 3, SIZE, SIZE), torch.randint(0, CLASSES, (BATCH, SIZE, SIZE))
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if i:  # the first step is warm-up
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


class _StepTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, *args: object) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, *args: object) -> None:
        self.times.append(time.perf_counter() - self._t0)


def matseg_step_seconds(steps: int, precision: str = "bf16-mixed") -> float:
    """Median seconds of one matseg training step (the Lightning module a profile builds)."""
    torch.manual_seed(0)
    model = smp.Unet("resnet50", encoder_weights=None, classes=CLASSES)
    module = SegmentationModule(
        model, CLASSES, "ce", 1e-4, "cosine", 100, 255, channels_last=precision == "bf16-mixed"
    )
    data = torch.utils.data.TensorDataset(
        torch.randn((steps + 1) * BATCH, 3, SIZE, SIZE),
        torch.randint(0, CLASSES, ((steps + 1) * BATCH, SIZE, SIZE)),
    )
    timer = _StepTimer()
    trainer = L.Trainer(
        accelerator="cpu", precision=precision, max_steps=steps + 1, limit_val_batches=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=BATCH))
    return float(np.median(timer.times[1:]))


def _test_iou(
    model: torch.nn.Module, ins, precision: str, tta: str = "none"
) -> tuple[float, float, float]:
    """(macro IoU, precipitate IoU, different_test precipitate IoU) with matseg's metrics."""
    out = []
    for split in ("test", "different_test"):
        images = ins.dataset().split(split)
        preds = predict(model, images, precision, precision == "bf16-mixed", tta)
        cms = np.stack([metrics.confusion_matrix(p, s.mask, CLASSES) for s, p in preds])
        scores = metrics.score_images(cms, ["matrix", "red", "blue"], None, n_boot=0)
        out.append((scores.macro_iou, scores.foreground_iou))
    return out[0][0], out[0][1], out[1][1]


def _nasa() -> tuple[object, MicrographDataset, MicrographDataset]:
    shared = Path(os.environ.get("MATSEG_SHARED_DATA", ROOT.parent / "shared" / "data"))
    if not (shared / "nasa_super").is_dir():
        raise SystemExit(f"nasa_super not found under {shared} (set MATSEG_SHARED_DATA)")
    spec = load_spec(ROOT / "examples" / "nasa-super.json")
    spec = spec.model_copy(update={"root": str(shared / "nasa_super")})
    ins = inspect_dataset(spec)
    return ins, ins.dataset().split("train"), ins.dataset().split("val")


def reference_loop(
    seed: int, minutes: float, train: MicrographDataset, precision: str = "bf16-mixed"
) -> tuple[torch.nn.Module, int]:
    """The issue's reference point: a plain loop (Adam 1e-3, CE, batch 8, 256 px random crops,
    no validation, last weights), bf16 autocast or fp32; returns the model and its step count."""
    torch.manual_seed(seed)
    model = smp.Unet("resnet18", encoder_weights=None, classes=CLASSES)
    crops = RandomCrops(train, 256, 160, seed=seed, augment=True, ignore_index=255)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    start, steps, epoch = time.perf_counter(), 0, 0
    model.train()
    while time.perf_counter() - start < minutes * 60:
        crops.epoch = epoch
        loader = torch.utils.data.DataLoader(crops, batch_size=8, shuffle=True, generator=generator)
        for x, y in loader:
            if time.perf_counter() - start >= minutes * 60:
                break
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
                logits = model(x)
            F.cross_entropy(logits.float(), y, ignore_index=255).backward()
            opt.step()
            steps += 1
        epoch += 1
    return model.eval(), steps


def matseg_fit(
    seed: int, minutes: float, train: MicrographDataset, val: MicrographDataset
) -> tuple[torch.nn.Module, Training]:
    """matseg as examples/profiles/nasa-super.json trains it (its whole training block)."""
    training = load_profile(ROOT / "examples" / "profiles" / "nasa-super.json").training
    block = training.model_copy(update={"max_minutes": minutes, "seeds": [seed]})
    torch.manual_seed(seed)
    model = smp.Unet("resnet18", encoder_weights=None, classes=CLASSES)
    fitted = fit(model, train, val, CLASSES, block, seed, 255, Path("/tmp"), progress_bar=False)
    return fitted.model, block


def iou_comparison(minutes: float, seeds: list[int], plain_fp32: bool) -> None:
    """Per seed: the reference loop and matseg on the same split and the same CPU minutes."""
    ins, train, val = _nasa()
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for seed in seeds:
        arms = [("reference loop bf16", "bf16-mixed")]
        if plain_fp32:
            arms.append(("plain loop fp32", "32"))
        for name, precision in arms:
            model, steps = reference_loop(seed, minutes, train, precision)
            score = _test_iou(model, ins, precision)
            rows.setdefault(name, []).append(score)
            print(f"seed {seed} {name:24s}: {steps} steps; test macro {score[0]:.3f}, "
                  f"precipitates {score[1]:.3f}; different_test {score[2]:.3f}",
                  flush=True)  # fmt: skip
        model, block = matseg_fit(seed, minutes, train, val)
        for tta in ("none", block.tta):
            score = _test_iou(model, ins, block.precision, tta)
            name = f"matseg (TTA {tta})"
            rows.setdefault(name, []).append(score)
            print(f"seed {seed} {name:24s}: test macro {score[0]:.3f}, precipitates "
                  f"{score[1]:.3f}; different_test {score[2]:.3f}", flush=True)  # fmt: skip
    print(f"\nnasa_super, resnet18-UNet from random weights, {minutes} CPU minutes, seeds {seeds}")
    print(f"{'arm':26s} {'precipitate IoU (test)':>26s} {'macro IoU':>10s} {'other alloys':>13s}")
    for name, scores in rows.items():
        a = np.array(scores)
        sd = a[:, 1].std(ddof=1) if len(a) > 1 else float("nan")
        print(f"{name:26s} {a[:, 1].mean():>17.3f} +- {sd:.3f} {a[:, 0].mean():>10.3f} "
              f"{a[:, 2].mean():>13.3f}")  # fmt: skip
    print("issue's reference point: precipitate IoU 0.866 (one run)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    parser.add_argument(
        "--iou-minutes", type=float, default=0, help="also compare IoU on nasa_super"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the IoU runs")
    parser.add_argument(
        "--plain-fp32", action="store_true", help="add the plain fp32 loop to the IoU runs"
    )
    parser.add_argument("--skip-speed", action="store_true", help="IoU runs only")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    if args.skip_speed:
        iou_comparison(args.iou_minutes, args.seeds, args.plain_fp32)
        return 0
    plain = plain_step_seconds(args.steps)
    ours = matseg_step_seconds(args.steps)
    ours32 = matseg_step_seconds(args.steps, precision="32")
    ips = lambda s: BATCH / s  # noqa: E731
    print(f"ResNet50-UNet {SIZE}x{SIZE} batch {BATCH}, images/s:")
    print(f"  plain fp32 loop          : {ips(plain):6.2f}  ({plain:.2f} s/step)")
    print(f"  matseg fp32 (Lightning)  : {ips(ours32):6.2f}  ({ours32:.2f} s/step)")
    print(f"  matseg bf16 + chan. last : {ips(ours):6.2f}  ({ours:.2f} s/step)")
    print(f"  speed-up matseg bf16 / plain fp32: {plain / ours:.2f}x (goal >= 1.8x)")
    if args.iou_minutes:
        iou_comparison(args.iou_minutes, args.seeds, args.plain_fp32)
    return 0


if __name__ == "__main__":
    sys.exit(main())
