"""Which OOD detector should decide readiness? Every detector x extractor x scenario x seed.

Needs a finished run on nasa_super (``matseg run examples/profiles/nasa-super.json --out runs``)
and ../shared/data. ID is the run's test split (same alloys as training); the scenarios are the
manifest's different_test alloys, the shale SEM tiles (another dataset), the XCT cement slices
(another modality), and synthetic shifts of the test images at three strengths. A second table
checks XCT against XCT: cement slices (ID, by depth: train / val / test) against fibre-composite
slices, with extractors that never saw either.

    python benchmarks/qc_detectors.py --run runs/nasa_super-cpu-XXXX [--seeds 0 1 2]

Prints AUROC mean +- sd over seeds per detector and scenario, and the share of same-distribution
test images flagged at the threshold fixed on validation (goal: AUROC >= 0.95 on SHIFT, shale and
cement with the default detector, at most 5% of ID test images flagged).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from matseg.profile import QualityControl
from matseg.qc.detectors import DETECTORS, make_detector
from matseg.qc.evaluation import acceptance_threshold, evaluate_scores
from matseg.qc.extractors import ExtractorContext, make_extractor
from matseg.qc.patches import cut_patches
from matseg.qc.workflow import evaluate_qc, fit_qc, load_job, scenario_images

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _cement_spec(folder: Path, pattern: str, name: str) -> Path:
    spec = {
        "name": name,
        "root": str(SHARED / "xct_qim3d_unlabeled"),
        "images": pattern,
        "masks": None,
        "reader": {"kind": "volume", "axis": 0},
        "modality": "XCT",
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


def _fmt(values: list[float]) -> str:
    return f"{np.mean(values):.3f}+-{np.std(values):.3f}" if values else "-"


def run_grid(run: Path, seeds: list[int], extractors: list[str], patch: int, cap: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="matseg-qc-bench-"))
    sources = [
        str(EXAMPLES / "nrcan-shale-sem.json"),
        str(_cement_spec(tmp, "cement_*.tif", "xct_cement")),
    ]
    detectors = list(DETECTORS)
    table: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    flagged: dict[tuple[str, str], list[float]] = defaultdict(list)
    loaded = None
    for ext in extractors:
        for seed in seeds:
            settings = QualityControl(
                extractors=ext.split("+"), detector="knn", compare=detectors, patch_size=patch,
                max_patches_per_image=cap, seed=seed,
            )  # fmt: skip
            if loaded is None:
                loaded = load_job(run, settings=settings)
            loaded.settings = settings
            t0 = time.perf_counter()
            result = evaluate_qc(fit_qc(loaded), sources, synthetic=True)
            print(f"  {ext} seed {seed}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            for group in ("scenarios", "synthetic"):
                for scenario, reports in result[group].items():
                    for det, rep in reports.items():
                        table[(ext, det, scenario)].append(rep["auroc"])
            for det, share in result["id_test_images_flagged"].items():
                flagged[(ext, det)].append(share)
                flagged[(ext, det + " patches")].append(result["id_test_patches_flagged"][det])
    scenarios = list(dict.fromkeys(s for _, _, s in table))
    print(
        f"\nnasa_super run {run.name}: AUROC (ID = test split patches), mean+-sd over seeds {seeds}"
    )
    for ext in extractors:
        print(f"\nextractor {ext}")
        head = ["detector", "ID imgs flagged", "ID patches flagged", *scenarios]
        print(" | ".join(head))
        for det in detectors:
            row = [det, _fmt(flagged[(ext, det)]), _fmt(flagged[(ext, det + " patches")])]
            row += [_fmt(table[(ext, det, s)]) for s in scenarios]
            print(" | ".join(row))


def xct_cement_vs_fibres(seeds: list[int], extractors: list[str], patch: int) -> None:
    """ID: cement slices (z < 64 fit, 64..95 threshold, >= 96 test); OOD: fibre slices."""
    tmp = Path(tempfile.mkdtemp(prefix="matseg-qc-xct-"))
    _, cement = scenario_images(str(_cement_spec(tmp, "cement_*.tif", "cement")), None)
    _, fibres = scenario_images(str(_cement_spec(tmp, "fibers_*.tif", "fibres")), None)
    z = np.arange(len(cement))
    parts = {
        "train": [cement[i] for i in z[z < 64]],
        "val": [cement[i] for i in z[(z >= 64) & (z < 96)]],
        "test": [cement[i] for i in z[z >= 96]],
    }
    print("\nXCT cement (ID) vs fibre composite: AUROC / ID test flagged, mean+-sd over seeds")
    for ext in extractors:
        models = [make_extractor(e, ExtractorContext()) for e in ext.split("+")]

        def embed(images: list, models: list = models) -> dict[str, np.ndarray]:
            arrays = cut_patches(images, patch, 4, 0).arrays
            return {m.name: m.embed(arrays) for m in models}

        emb = {k: embed(v) for k, v in parts.items()}
        ood = embed(fibres)
        for det in DETECTORS:
            aurocs, shares = [], []
            for seed in seeds:
                d = make_detector(det, seed=seed).fit(emb["train"])
                threshold = acceptance_threshold(d.score_samples(emb["val"]), 0.95)
                rep = evaluate_scores(d.score_samples(emb["test"]), d.score_samples(ood), threshold)
                aurocs.append(rep.auroc)
                shares.append(rep.flagged_id_fraction)
            print(f"  {ext:20s} {det:12s} AUROC {_fmt(aurocs)}  ID flagged {_fmt(shares)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="finished nasa_super run folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--extractors",
        nargs="+",
        default=["encoder", "classical", "efficientnet-lite0", "encoder+classical"],
        help="extractor names; a+b uses both together",
    )
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--max-patches", type=int, default=48)
    parser.add_argument("--skip-run", action="store_true", help="only the XCT table")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"skipped: real data not found at {SHARED}")
    if not args.skip_run:
        run_grid(args.run, args.seeds, args.extractors, args.patch, args.max_patches)
    xct_cement_vs_fibres(args.seeds, [e for e in args.extractors if "encoder" not in e], args.patch)


if __name__ == "__main__":
    main()
