"""A run's quality control in one call: input typicality, its evaluation, and output QC.

Used by ``matseg qc fit`` for one job and by ``matseg run`` (when the profile's ``qc.enabled``)
for the best job of each dataset.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matseg.job import PreparedData
from matseg.profile import QualityControl
from matseg.qc.outputs import output_qc
from matseg.qc.workflow import Progress, evaluate_qc, fit_qc, load_job
from matseg.rundir import OUTPUT_QC_FILE, QC_FILE, RunDir


def run_quality_control(
    run: RunDir | Path,
    job: str | None = None,
    settings: QualityControl | None = None,
    synthetic: bool | None = None,
    progress: Progress | None = None,
    data: PreparedData | None = None,
) -> dict[str, Any]:
    """Fit on the job's train patches, evaluate every declared shift, score its predictions."""
    loaded = load_job(run, job, settings, data)
    fitted = fit_qc(loaded, progress=progress)
    result = evaluate_qc(fitted, synthetic=synthetic, progress=progress)
    return {"folder": str(loaded.folder), "input": result, "output": output_qc(loaded)}


def quality_control_for_run(
    run: RunDir,
    best_jobs: Mapping[str, str],
    prepared: Mapping[str, PreparedData],
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Quality control of each given job (job hash -> dataset: the best per dataset) on its
    already prepared dataset; a job whose QC files exist is kept."""
    done = []
    for job, dataset in best_jobs.items():
        if run.qc_file(job, QC_FILE).exists() and run.qc_file(job, OUTPUT_QC_FILE).exists():
            continue
        done.append(run_quality_control(run, job, progress=progress, data=prepared[dataset]))
    return done
