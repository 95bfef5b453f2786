"""Sample predictions of a job (image, ground truth, prediction, difference), drawn when the
record is written, so the report can show Z next to the truth without reading the dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from matseg.atomic import write_bytes
from matseg.errors import MatsegError
from matseg.execution.job import prediction_file
from matseg.plan import Job
from matseg.report.figures import png, pyplot


def write_sample_figure(run: Path, job: Job, split: str = "test", n: int = 3) -> Path | None:
    """``RUN/figures/samples-<job>.png`` for up to ``n`` images of ``split``; None if unreadable."""
    from matseg.datasets.check import inspect_dataset
    from matseg.datasets.spec import spec_from_dict

    cache = run / "cache" / job.dataset
    try:
        ins = inspect_dataset(spec_from_dict(job.spec, where=f"dataset {job.dataset}"), cache)
        images = ins.dataset(cache).split(split)
    except (MatsegError, KeyError):
        return None  # the data moved since training; the record says what it has
    rows = []
    for i in range(min(n, len(images))):
        sample = images[i]
        pred_file = run / "jobs" / job.hash / prediction_file(split, sample.meta.key)
        if sample.mask is None or not pred_file.is_file():
            continue
        rows.append((sample, np.asarray(Image.open(pred_file)).astype(np.int64)))
    if not rows:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), 4, figsize=(10, 2.6 * len(rows)), squeeze=False)
    k = max(int(max(s.mask.max(), p.max())) for s, p in rows) + 1
    for r, (sample, pred) in enumerate(rows):
        truth = sample.mask.astype(np.int64)
        valid = truth != ins.spec.ignore_index
        wrong = (pred != truth) & valid
        grey = sample.image.mean(axis=0)
        panels = [
            (grey, "gray", f"{sample.meta.key}"),
            (np.where(valid, truth, -1), "viridis", "ground truth"),
            (pred, "viridis", "prediction"),
            (wrong, "Reds", f"difference ({100 * wrong.sum() / max(valid.sum(), 1):.1f}% wrong)"),
        ]
        for ax, (arr, cmap, title) in zip(axes[r], panels, strict=True):
            vmax = 1 if cmap == "Reds" else (None if cmap == "gray" else k - 1)
            ax.imshow(arr, cmap=cmap, vmin=0 if cmap != "gray" else None, vmax=vmax,
                      interpolation="nearest")  # fmt: skip
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
    return write_bytes(run / "figures" / f"samples-{job.hash}.png", png(fig))
