"""How often one `matseg run` reads each dataset: calls of `inspect_dataset` in a whole run.

A one-job run (resnet18 x UNet, 1 epoch, no weights) on a generated 16-image dataset, with QC
enabled, through the command line in this process, under cProfile; prints the number of
`inspect_dataset` calls (the full check of a dataset: files, masks, encodings, splits), the
test split's macro IoU from `results.csv` (the same before and after a structural change) and
the run's wall time. Every stage that needs the data should
reuse the one inspection made at the start of the run.

    python benchmarks/run_inspections.py

The same script runs against an older checkout to compare (its `matseg` first on the path):

    PYTHONPATH=/path/to/old/src python benchmarks/run_inspections.py
"""

from __future__ import annotations

import cProfile
import csv
import json
import os
import pstats
import tempfile
import time
from pathlib import Path


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import matseg
    from matseg.cli import app
    from matseg.datasets.synthetic import write_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["MATSEG_CACHE_DIR"] = str(work / "cache")
        spec = write_synthetic_dataset(work / "data", kind="particles", n_images=16, size=64)
        profile = {
            "name": "inspections",
            "datasets": [str(spec)],
            "model": {"encoders": ["resnet18"], "decoders": ["unet"], "weights": "none"},
            "training": {"batch_size": 4, "max_epochs": 1, "patch_size": 64},
            "evaluation": {"protocol": "holdout"},  # one job, as before folds existed
            "qc": {
                "enabled": True,
                "extractors": ["classical"],
                "compare": ["mahalanobis"],
                "patch_size": 32,
                "synthetic_shifts": False,
            },
        }
        profile_file = work / "profile.json"
        profile_file.write_text(json.dumps(profile))
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        try:
            app(["run", str(profile_file), "--out", str(work / "runs")], standalone_mode=False)
        finally:
            profiler.disable()
        seconds = time.perf_counter() - start
        stats = pstats.Stats(profiler).stats  # (file, line, name) -> (calls, ...)
        inspections = sum(
            calls for (_, _, name), (_, calls, *_rest) in stats.items() if name == "inspect_dataset"
        )
        print(f"matseg {matseg.__version__} from {Path(matseg.__file__).parent}")
        print(f"inspect_dataset calls in one run (one dataset, one job, QC on): {inspections}")
        (results,) = (work / "runs").glob("*/results.csv")
        with results.open(newline="") as f:
            test = [row for row in csv.DictReader(f) if row["split"] == "test"]
        print(f"test macro IoU: {', '.join(row['macro_iou'] for row in test)}")
        print(f"run wall time: {seconds:.1f} s")


if __name__ == "__main__":
    main()
