"""A run's quality control in one call: input typicality, its evaluation, and output QC.

Used by ``matseg qc fit`` for one job and by ``matseg run`` (when the profile's ``qc.enabled``)
for the best job of each dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matseg.profile import QualityControl
from matseg.qc.outputs import output_qc
from matseg.qc.workflow import Progress, evaluate_qc, fit_qc, load_job


def run_quality_control(
    run: Path,
    job: str | None = None,
    settings: QualityControl | None = None,
    synthetic: bool | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Fit on the job's train patches, evaluate every declared shift, score its predictions."""
    loaded = load_job(run, job, settings)
    fitted = fit_qc(loaded, progress=progress)
    result = evaluate_qc(fitted, synthetic=synthetic, progress=progress)
    return {"folder": str(loaded.folder), "input": result, "output": output_qc(loaded)}


def quality_control_for_run(
    run: Path, best_jobs: list[str], progress: Progress | None = None
) -> list[dict[str, Any]]:
    """Quality control of each given job (the best per dataset); a job with qc.json is kept."""
    done = []
    for job in best_jobs:
        if (run / "qc" / job / "qc.json").exists() and (
            run / "qc" / job / "output_qc.json"
        ).exists():
            continue
        done.append(run_quality_control(run, job, progress=progress))
    return done
