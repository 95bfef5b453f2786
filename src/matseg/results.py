"""Results tables of finished jobs: the paper's Table 3 (every job), Table 2 (best per dataset).

``results.csv`` has one row per job and evaluated split (``test``, and shift sets such as
``different_test``), with confidence intervals and the trivial baselines on the same images.
``best.csv`` picks, per dataset, the combination with the best VALIDATION IoU (the test split is
never used for a choice) and shows its test numbers.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from matseg.atomic import write_bytes
from matseg.plan import Job

COLUMNS = [
    "dataset", "split", "encoder", "decoder", "weights", "seed",
    "macro_iou", "macro_iou_low", "macro_iou_high",
    "foreground_iou", "foreground_iou_low", "foreground_iou_high",
    "dice", "pixel_accuracy", "weighted_iou", "iou_per_class",
    "baseline_majority_iou", "baseline_all_foreground_iou",
    "best_val_iou", "epochs", "best_epoch", "stopped_by", "train_seconds",
    "parameters", "latency_ms_256", "n_images", "job",
]  # fmt: skip


def read_job_metrics(path: Path) -> dict[str, Any] | None:
    """A job's metrics.json, or None when the job has not finished."""
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _num(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else round(value, 6)
    return "" if value is None else value


def _ci(scores: dict[str, Any], name: str) -> tuple[Any, Any]:
    low_high = (scores.get("ci") or {}).get(name)
    return (low_high[0], low_high[1]) if low_high else (None, None)


def job_rows(job: Job, result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per evaluated split of a finished job."""
    rows = []
    for split, ev in result["evaluations"].items():
        s = ev["scores"]
        base = ev.get("baselines", {})
        majority = base.get("majority class", {})
        all_fg = base.get("all foreground", {})
        low, high = _ci(s, "macro_iou")
        fg_low, fg_high = _ci(s, "foreground_iou")
        per_class = s.get("iou_per_class") or {}
        rows.append(
            {
                "dataset": job.dataset, "split": split, "encoder": job.encoder,
                "decoder": job.decoder, "weights": job.weights, "seed": job.seed,
                "macro_iou": s.get("macro_iou"), "macro_iou_low": low, "macro_iou_high": high,
                "foreground_iou": s.get("foreground_iou"),
                "foreground_iou_low": fg_low, "foreground_iou_high": fg_high,
                "dice": s.get("macro_dice"), "pixel_accuracy": s.get("pixel_accuracy"),
                "weighted_iou": s.get("weighted_iou"),
                "iou_per_class": " ".join(
                    f"{c}={'nan' if v is None else f'{v:.4f}'}" for c, v in per_class.items()
                ),
                "baseline_majority_iou": majority.get("macro_iou"),
                "baseline_all_foreground_iou": all_fg.get("foreground_iou"),
                "best_val_iou": result.get("best_val_iou"), "epochs": result.get("epochs"),
                "best_epoch": result.get("best_epoch"), "stopped_by": result.get("stopped_by"),
                "train_seconds": result.get("train_seconds"),
                "parameters": result.get("parameters"),
                "latency_ms_256": result.get("latency_ms_256"),
                "n_images": ev.get("n_images"), "job": job.hash,
            }
        )  # fmt: skip
    return rows


def best_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset, the test row of the job with the best validation IoU."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["split"] != "test":
            continue
        current = best.get(row["dataset"])
        if current is None or (row["best_val_iou"] or -1) > (current["best_val_iou"] or -1):
            best[row["dataset"]] = row
    return list(best.values())


def _csv(rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _num(row.get(k)) for k in COLUMNS})
    return buf.getvalue().encode()


def write_results(
    folder: Path, jobs: list[Job], results: dict[str, dict[str, Any] | None]
) -> list[dict[str, Any]]:
    """Write results.csv and best.csv from the finished jobs; return the rows."""
    rows = [row for job in jobs if (r := results.get(job.hash)) for row in job_rows(job, r)]
    write_bytes(folder / "results.csv", _csv(rows))
    write_bytes(folder / "best.csv", _csv(best_rows(rows)))
    return rows
