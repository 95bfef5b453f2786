"""Cross-validation against holdout on real micrographs: does the decision become powered, and is
the out-of-fold estimate honest?

Per dataset (nasa_super, nrcan_shale_sem, tbm_grain_256 from ``../shared/data``), the same grid
(EfficientNet-Lite0 with its ImageNet weights x UNet / DeepLabV3+) under the same epoch budget is
run twice: 5-fold cross-validation (decision on out-of-fold images) and holdout (decision on the
validation split). Prints, per dataset and protocol: the images the decision used, the verdict,
the runner-up's difference, Wilcoxon and Holm p-values, the recommended combination's
out-of-fold (or validation) IoU with its 95% CI, its test IoU (scored once, after the choice),
whether the test figure lies inside that CI, the pick's per-fold held-out IoU, and (CV) its fold
models alone on test minus their out-of-fold IoU with a 95% CI (is the gap image sampling?).

    python benchmarks/crossval_real.py [--datasets nasa_super ...] [--epochs 40] [--out DIR]

The budget is in epochs and crops (never minutes), so the figures do not depend on the
machine; the wall time does, and is printed. Run it with nothing else on the machine.
"""

from __future__ import annotations

import json
from pathlib import Path

from real_runs import arguments, lite0_profile, run_profile

SPECS = {
    "nasa_super": "nasa-super.json",
    "nrcan_shale_sem": "nrcan-shale-sem.json",
    "tbm_grain_256": "tbm-grain-256.json",
}


def profile(dataset: str, protocol: str, epochs: int, crops: int) -> dict:
    evaluation = {"protocol": "cv", "folds": 5} if protocol == "cv" else {"protocol": "holdout"}
    return lite0_profile(f"cv-vs-holdout-{dataset}-{protocol}", SPECS[dataset], epochs, crops,
                         evaluation=evaluation)  # fmt: skip


def summarise(run_path: Path) -> dict:
    from matseg.record import read_record
    from matseg.report.recommend import recommend

    record = read_record(run_path / "record.json")
    rec = recommend(record)
    (d,) = rec.datasets
    pick = d.recommended
    runner = next((c for c in d.ranking[1:] if c.evidence.versus_best), None)
    versus = runner.evidence.versus_best if runner else None
    lo, hi = pick.evidence.macro_iou_ci if pick else (None, None)
    inside = (
        pick is not None and pick.test_iou is not None and lo is not None and hi is not None
        and lo <= pick.test_iou <= hi
    )  # fmt: skip
    return {
        "images": len(d.decision.images),
        "verdict": d.verdict,
        "recommended": d.use,
        "difference": versus.mean_difference if versus else None,
        "p": versus.p if versus else None,
        "p_holm": versus.p_holm if versus else None,
        "p_equivalent_holm": versus.p_equivalent_holm if versus else None,
        "evidence_iou": pick.evidence.macro_iou if pick else None,
        "evidence_ci": [lo, hi],
        "test_iou": pick.test_iou if pick else None,
        "test_inside_ci": inside,
        "converged": [c.name for c in d.ranking if c.converged],
        # the pick's jobs: per-fold held-out (or validation) IoU, epochs, how each stopped
        "jobs": [
            {
                "iou": (j.evaluations.get("oof") or j.evaluations["val"]).macro_iou,
                "epochs": j.epochs,
                "best_epoch": j.best_epoch,
                "stopped_by": j.stopped_by,
            }
            for j in record.jobs
            if pick is not None and j.hash in pick.evidence.jobs
        ],
        "test_vs_oof": d.test_vs_oof.model_dump() if d.test_vs_oof else None,
        "test_vs_oof_consistent": d.test_vs_oof.consistent if d.test_vs_oof else None,
    }


def main() -> None:
    parser = arguments(__doc__, list(SPECS), "/tmp/matseg-crossval-real")
    parser.add_argument("--protocols", nargs="+", default=["cv", "holdout"])
    args = parser.parse_args()
    results = {}
    for dataset in args.datasets:
        for protocol in args.protocols:
            done, wall = run_profile(
                args.out / dataset / protocol, profile(dataset, protocol, args.epochs, args.crops)
            )
            summary = summarise(done.path) | {"wall_s": wall}
            results[f"{dataset}/{protocol}"] = summary
            print(f"{dataset} {protocol}: {json.dumps(summary)}", flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
