"""Data pipeline throughput against a ResNet50-UNet training step, measured in one run.

Prints samples per second through the whole pipeline (read, decode mask, split, tile, normalise,
collate) cold and with the decoded-array cache, the time of one ResNet50-UNet training step at
256x256, batch 16 (fp32, and bf16 autocast with channels_last), and the ratio the issue sets a
goal for: data loading per batch after the first epoch / training step <= 5%.

    python benchmarks/data_pipeline.py                 # real data (tbm_grain_256) if present
    python benchmarks/data_pipeline.py --synthetic     # generated data only
    python benchmarks/data_pipeline.py --spec examples/ampis-powder-particles.json --no-model
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from matseg.datasets.check import inspect_dataset
from matseg.datasets.dataset import collate_samples
from matseg.datasets.spec import DatasetSpec, load_spec
from matseg.datasets.synthetic import write_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
BATCH = 16


def _dataset_spec(use_synthetic: bool, workdir: Path, spec_path: Path | None) -> DatasetSpec:
    if spec_path is not None:
        return load_spec(spec_path)
    shared = Path(os.environ.get("MATSEG_SHARED_DATA", ROOT.parent / "shared" / "data"))
    if not use_synthetic and (shared / "tbm_grain_256").is_dir():
        spec = load_spec(ROOT / "examples" / "tbm-grain-256.json")
        return spec.model_copy(update={"root": str(shared / "tbm_grain_256")})
    return load_spec(write_synthetic_dataset(workdir / "synthetic", n_images=64, size=256, seed=0))


def _epoch(dataset, batch: int = BATCH) -> tuple[float, int]:
    """Seconds to serve every sample once, batched and collated as a DataLoader would."""
    start = time.perf_counter()
    n = 0
    for first in range(0, len(dataset), batch):
        samples = [dataset[i] for i in range(first, min(first + batch, len(dataset)))]
        collate_samples(samples)
        n += len(samples)
    return time.perf_counter() - start, n


def _train_step_seconds(precision: str, steps: int) -> float:
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    model = smp.Unet("resnet50", encoder_weights=None, in_channels=3, classes=2)
    x = torch.randn(BATCH, 3, 256, 256)
    y = torch.randint(0, 2, (BATCH, 256, 256))
    if precision == "bf16":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn(model(x).float(), y)
        loss.backward()
        opt.step()

    step()  # warm-up (allocations, oneDNN kernel choice)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", action="store_true", help="use generated data only")
    parser.add_argument("--spec", type=Path, help="measure this dataset spec instead")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per precision")
    parser.add_argument("--no-model", action="store_true", help="skip the training-step timing")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}")

    with tempfile.TemporaryDirectory(prefix="matseg-bench-") as tmp:
        workdir = Path(tmp)
        spec = _dataset_spec(args.synthetic, workdir, args.spec)
        t0 = time.perf_counter()
        ins = inspect_dataset(spec)
        print(
            f"dataset {spec.name}: {len(ins.stats)} items; "
            f"discover+split+check {time.perf_counter() - t0:.2f} s"
        )

        cold = ins.dataset()
        cold_s, n = _epoch(cold)
        cached = ins.dataset(workdir / "cache")
        first_s, _ = _epoch(cached)  # fills the cache
        warm_s = min(_epoch(cached)[0] for _ in range(3))
        print(f"cold (decode every time)     : {n / cold_s:8.1f} samples/s")
        print(f"first epoch, filling cache   : {n / first_s:8.1f} samples/s")
        print(f"after first epoch (cached)   : {n / warm_s:8.1f} samples/s")
        load_per_batch = warm_s / n * BATCH
        cold_per_batch = cold_s / n * BATCH
        print(
            f"loading one batch of {BATCH}: cold {cold_per_batch * 1e3:.1f} ms, "
            f"cached {load_per_batch * 1e3:.1f} ms"
        )

    if args.no_model:
        return 0
    for precision in ("fp32", "bf16"):
        step_s = _train_step_seconds(precision, args.steps)
        ratio = load_per_batch / step_s
        print(
            f"ResNet50-UNet step {precision:>4} 256x256 b{BATCH}: {step_s:6.2f} s; "
            f"cached loading / step = {ratio:.2%} (goal <= 5%); "
            f"cold = {cold_per_batch / step_s:.2%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
