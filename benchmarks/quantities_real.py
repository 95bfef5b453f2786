"""Microstructure quantities on real micrographs: does the architecture with the best IoU get
the scientist's number right?

Per dataset (from ``../shared/data``) and its target quantity, one 5-fold cross-validated run
(EfficientNet-Lite0 with its ImageNet weights x UNet / DeepLabV3+, an epoch budget) is trained,
then decided twice from the same jobs: ranked by IoU and ranked by the target's out-of-fold
absolute error. Prints per dataset: both recommendations and verdicts, each combination's
out-of-fold target error with its CI and bias, where the two rankings disagree, and the
recommended model's quantities on the test split (truth, prediction, bias and error with CIs).

    python benchmarks/quantities_real.py [--datasets nasa_super ...] [--epochs 40] [--out DIR]

Targets: nasa_super the fine and the coarse gamma-prime area fraction, tbm_grain_256 the mean
lineal intercept (ASTM E112; in pixels, the source gives no pixel size, so G is undefined),
nrcan_shale_sem the grain coverage fraction, nasa_meltpool the melt-pool area fraction and
count. The budget is in epochs and crops (never minutes); run it with nothing else running.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {
    "nasa_super": ("nasa-super.json", ["area_fraction:red_fine_gamma_prime",
                                       "area_fraction:blue_coarse_gamma_prime"]),
    "tbm_grain_256": ("tbm-grain-256.json", ["mean_lineal_intercept:grain_boundary"]),
    "nrcan_shale_sem": ("nrcan-shale-sem.json", ["area_fraction:grain"]),
    "nasa_meltpool": ("nasa-meltpool.json", ["area_fraction:melt_pool",
                                             "feature_count:melt_pool"]),
}  # fmt: skip


def profile(dataset: str, target: str, epochs: int, crops: int) -> dict:
    return {
        "name": f"quantities-{dataset}",
        "datasets": [str(ROOT / "examples" / TARGETS[dataset][0])],
        "task": {"target": target},
        "model": {"encoders": ["tu-tf_efficientnet_lite0"], "decoders": ["unet", "deeplabv3plus"],
                  "weights": "efficientnet-lite0"},
        "training": {"batch_size": 8, "learning_rate": 1e-3, "max_epochs": epochs, "patience": 10,
                     "patch_size": 256, "crops_per_epoch": crops, "loss": "ce+dice",
                     "precision": "bf16-mixed", "seeds": [0]},
        "evaluation": {"protocol": "cv", "folds": 5},
    }  # fmt: skip


def summarise(run_path: Path, target: str) -> dict:
    from matseg.decision import Ranking, decide
    from matseg.record import read_record
    from matseg.report.recommend import recommend
    from matseg.report.tables import quantity_table
    from matseg.rundir import RunDir

    folder = RunDir(run_path)
    results = folder.results()
    out: dict = {"target": target}
    for by in ("iou", "target"):
        (d,) = decide(results, ranking_by=Ranking(target, by))
        out[f"by_{by}"] = {"recommended": d.recommended, "verdict": d.verdict,
                           "ranked_by": d.ranked_by}  # fmt: skip
        out["combinations"] = {
            e.name: {"oof_iou": round(e.mean_iou, 4), "target_error": e.target_error,
                     "target_error_ci": e.target_error_ci, "target_bias": e.target_bias}
            for e in d.ranking
        }  # fmt: skip
        out["notes"] = d.notes
    header, rows = quantity_table(recommend(read_record(folder.record_file)), [target])
    out["test_quantities"] = [dict(zip(header, row, strict=True)) for row in rows]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(TARGETS))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--crops", type=int, default=32, help="random crops per epoch")
    parser.add_argument("--out", type=Path, default=Path("/tmp/matseg-quantities-real"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from matseg.pipeline import run
    from matseg.profile import load_profile

    if not (ROOT.parent / "shared" / "data").is_dir():
        raise SystemExit("skipped: ../shared/data is absent")
    results = {}
    for dataset in args.datasets:
        targets = TARGETS[dataset][1]
        folder = args.out / dataset
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "profile.json"  # the first target names the run; the rest re-decide
        path.write_text(json.dumps(profile(dataset, targets[0], args.epochs, args.crops)))
        start = time.perf_counter()
        done = run(load_profile(path), folder / "runs", resume=True, progress_bar=False)
        wall = round(time.perf_counter() - start)
        for target in targets:
            summary = summarise(done.path, target) | {"wall_s": wall}
            results[f"{dataset}/{target}"] = summary
            print(f"{dataset} {target}: {json.dumps(summary)}", flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
