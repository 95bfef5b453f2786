"""matseg's training step against a plain fp32 PyTorch loop of the same model, in one run.

Throughput: images per second of ResNet50-UNet at 256x256, batch 16, for (a) a plain loop (fp32,
Adam, cross-entropy, no tricks) and (b) matseg's Lightning training step as a profile configures
it (bf16-mixed autocast with channels_last on CPU). Goal: (b) >= 1.8x (a).

Accuracy (``--iou-minutes M``): both ways train a resnet18-UNet from the same initial weights on
nasa_super's manifest split for M minutes of wall clock on the same random crops, then score
the test split with the same code; the IoU of both is printed.

    python benchmarks/train_step.py                     # throughput only (about 3 minutes)
    python benchmarks/train_step.py --iou-minutes 8     # plus the nasa_super IoU of both
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
from matseg.datasets.spec import load_spec
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


def _test_iou(model: torch.nn.Module, ins, precision: str) -> tuple[float, float, float]:
    """(macro IoU, precipitate IoU, different_test precipitate IoU) with matseg's metrics."""
    out = []
    for split in ("test", "different_test"):
        preds = predict(model, ins.dataset().split(split), precision, precision == "bf16-mixed")
        cms = np.stack([metrics.confusion_matrix(p, s.mask, CLASSES) for s, p in preds])
        scores = metrics.score_images(cms, ["matrix", "red", "blue"], None, n_boot=0)
        out.append((scores.macro_iou, scores.foreground_iou))
    return out[0][0], out[0][1], out[1][1]


def iou_comparison(minutes: float) -> None:
    shared = Path(os.environ.get("MATSEG_SHARED_DATA", ROOT.parent / "shared" / "data"))
    spec = load_spec(ROOT / "examples" / "nasa-super.json")
    spec = spec.model_copy(update={"root": str(shared / "nasa_super")})
    ins = inspect_dataset(spec)
    train = ins.dataset().split("train")
    torch.manual_seed(0)
    init = smp.Unet("resnet18", encoder_weights=None, classes=CLASSES).state_dict()

    # plain fp32 loop on the same crops
    model = smp.Unet("resnet18", encoder_weights=None, classes=CLASSES)
    model.load_state_dict(init)
    crops = RandomCrops(train, 256, 40, seed=0, augment=True, ignore_index=255)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    start, steps, epoch = time.perf_counter(), 0, 0
    model.train()
    while time.perf_counter() - start < minutes * 60:
        crops.epoch = epoch
        loader = torch.utils.data.DataLoader(crops, batch_size=8, shuffle=True)
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y, ignore_index=255).backward()
            opt.step()
            steps += 1
        epoch += 1
    plain = _test_iou(model.eval(), ins, "32")
    print(f"plain fp32 loop : {steps} steps in {minutes} min; test macro IoU {plain[0]:.3f}, "
          f"precipitates {plain[1]:.3f}; different_test precipitates {plain[2]:.3f}")  # fmt: skip

    # matseg, same model, same minutes, same loss (CE): only the training step differs
    model = smp.Unet("resnet18", encoder_weights=None, classes=CLASSES)
    model.load_state_dict(init)
    training = {
        "batch_size": 8, "learning_rate": 1e-3, "scheduler": "cosine", "max_epochs": 200,
        "patience": 20, "patch_size": 256, "crops_per_epoch": 40, "augment": True,
        "loss": "ce", "precision": "bf16-mixed", "channels_last": None,
        "max_minutes": minutes,
    }  # fmt: skip
    fitted = fit(model, train, ins.dataset().split("val"), CLASSES, training, 0, 255,
                 Path("/tmp"), progress_bar=False)  # fmt: skip
    ours = _test_iou(fitted.model, ins, "bf16-mixed")
    print(
        f"matseg bf16     : {fitted.epochs_run} epochs in {minutes} min; test macro IoU "
        f"{ours[0]:.3f}, precipitates {ours[1]:.3f}; different_test precipitates {ours[2]:.3f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    parser.add_argument(
        "--iou-minutes", type=float, default=0, help="also compare IoU on nasa_super"
    )
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
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
        iou_comparison(args.iou_minutes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
