"""Successive halving against the full grid: the same recommendation, at what share of the compute?

For each generated microstructure (pores, particles, grains, phases) and generator seed, the same
profile (three decoders on a small encoder, 3-fold cross-validation, 9 epochs) runs twice: as
the full grid, and with ``evaluation.search = halving`` (rate 3, three rungs: 1, 3 and 9
epochs). Prints, per case, both recommendations and verdicts, and the epochs each trained (the
compute measure: epochs actually run, early stopping included, so it does not depend on the
machine); then how often they agree and the mean share of the grid's epochs halving used.

    python benchmarks/halving_agreement.py [--kinds pores grains] [--seeds 0 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def profile(spec: Path, search: str) -> dict:
    evaluation = {"protocol": "cv", "folds": 3}
    if search == "halving":
        evaluation |= {"search": "halving", "halving_rate": 3, "rungs": 3}
    return {
        "name": f"halving-{search}",
        "datasets": [str(spec)],
        "model": {"encoders": ["resnet18"], "decoders": ["unet", "fpn", "deeplabv3plus"],
                  "weights": "none"},
        "training": {"batch_size": 4, "learning_rate": 1e-3, "max_epochs": 9, "patience": 20,
                     "patch_size": 64},
        "evaluation": evaluation,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", default=["pores", "particles", "grains", "phases"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--out", type=Path, default=Path("/tmp/matseg-halving"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from matseg.datasets.synthetic import write_synthetic_dataset
    from matseg.pipeline import run
    from matseg.profile import load_profile

    rows = []
    for kind in args.kinds:
        for seed in args.seeds:
            folder = args.out / f"{kind}-{seed}"
            spec = write_synthetic_dataset(
                folder / "data", kind=kind, n_images=24, size=64, seed=seed
            )
            outcome = {}
            for search in ("grid", "halving"):
                path = folder / f"{search}.json"
                path.write_text(json.dumps(profile(spec, search)))
                done = run(load_profile(path), folder / "runs", resume=True, progress_bar=False)
                (decision,) = done.decisions()
                epochs = (
                    json.loads(done.folder.halving_file.read_text())["epochs_run"]
                    if search == "halving"
                    else sum(j.result.epochs for j in done.jobs)
                )
                outcome[search] = (decision.recommended, decision.verdict, epochs)
            same = outcome["grid"][0] == outcome["halving"][0]
            share = outcome["halving"][2] / outcome["grid"][2]
            rows.append((same, share))
            print(f"{kind} seed {seed}: grid {outcome['grid']}, halving {outcome['halving']}, "
                  f"same: {same}, compute share {share:.2f}", flush=True)  # fmt: skip
    agree = sum(same for same, _ in rows)
    mean_share = sum(share for _, share in rows) / len(rows)
    print(f"halving reached the grid's recommendation in {agree} of {len(rows)} cases, using "
          f"{mean_share:.2f} of the grid's epochs on average")  # fmt: skip


if __name__ == "__main__":
    main()
