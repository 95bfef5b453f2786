"""One job, start to finish: data, model, training, ONE test evaluation, files in its folder.

The folder is ``jobs/<job-hash>/``; ``metrics.json`` is written last, atomically, so its
presence means the job finished and a resumed run skips it.
"""

from __future__ import annotations

import csv
import io
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from matseg import __version__, metrics
from matseg.atomic import write_bytes, write_json
from matseg.datasets.check import Inspection, inspect_dataset, report
from matseg.datasets.dataset import MicrographDataset
from matseg.datasets.spec import spec_from_dict
from matseg.errors import DataError
from matseg.models import build_model, save_weights
from matseg.plan import Job
from matseg.training import FitResult, fit, predict, process_rank, uses_channels_last

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


@dataclass
class PreparedData:
    """A dataset inspected once per run and shared by its jobs."""

    inspection: Inspection
    classes: list[str]
    in_channels: int
    train_frequencies: np.ndarray
    dataset: MicrographDataset  # every split, built once per run and shared by the jobs


def prepare_dataset(job: Job, cache_dir: Path | None) -> PreparedData:
    """Inspect the job's dataset; refuse one that is not usable, with its problems."""
    spec = spec_from_dict(job.spec, where=f"dataset {job.dataset}")
    ins = inspect_dataset(spec, cache_dir=cache_dir)
    rep = report(ins)
    if not rep.usable:
        errors = [p for p in rep.problems if p.level == "error"]
        first = errors[0] if errors else None
        raise DataError(
            f"dataset {job.dataset}",
            "a usable dataset (matseg datasets check)",
            f"{len(errors)} errors, first: {first.where}: {first.message}" if first else "no items",
        )
    classes = job.classes or rep.classes
    channels = {int(c) for c in rep.channels}
    if len(channels) != 1:
        raise DataError(
            f"dataset {job.dataset}", "one channel count for all images", f"{sorted(channels)}"
        )
    train_keys = [i.key for i in ins.split.splits.get("train", [])]
    if not train_keys or not ins.split.splits.get("val"):
        raise DataError(f"dataset {job.dataset}", "non-empty train and val splits", f"{rep.splits}")
    counts = np.zeros(len(classes))
    for key in train_keys:
        for cls, n in (ins.stats[key].class_counts or {}).items():
            if 0 <= cls < len(classes):
                counts[cls] += n
    frequencies = counts / max(counts.sum(), 1)
    return PreparedData(ins, classes, channels.pop(), frequencies, ins.dataset(cache_dir))


def mask_png(mask: np.ndarray) -> bytes:
    """A class-id mask as PNG bytes (8-bit)."""
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def prediction_file(split: str, key: str) -> str:
    """Where a job folder keeps the predicted mask of one image (relative to the job folder)."""
    return f"predictions/{split}/{key.replace('/', '__')}.png"


def _curves_csv(history: list[dict[str, float]]) -> bytes:
    buf = io.StringIO()
    fields = ["epoch", "train_loss", "val_iou", "lr", "seconds"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue().encode()


def _latency_ms(model: torch.nn.Module, in_channels: int, size: int = 256) -> float:
    """Median forward time of one size x size image on this CPU (fp32), for the cost of a model."""
    x = torch.randn(1, in_channels, size, size)
    model.eval()
    times = []
    with torch.no_grad():
        for _ in range(3):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def evaluate_split(
    model: torch.nn.Module,
    data: PreparedData,
    split: str,
    job: Job,
    folder: Path,
    channels_last: bool,
) -> dict[str, Any]:
    """Predict a split once, write the masks, and score them (with baselines on the same images)."""
    dataset = data.dataset.split(split)
    spec = data.inspection.spec
    k = len(data.classes)
    tta = job.training.get("tta", "none")
    results = predict(model, dataset, job.training["precision"], channels_last, tta)
    confusions = np.zeros((len(results), k, k), dtype=np.int64)
    counts = np.zeros((len(results), k), dtype=np.int64)
    per_image = []
    for n, (sample, pred) in enumerate(results):
        assert sample.mask is not None
        confusions[n] = metrics.confusion_matrix(pred, sample.mask, k, spec.ignore_index)
        counts[n] = confusions[n].sum(axis=1)
        write_bytes(folder / prediction_file(split, sample.meta.key), mask_png(pred))
        per_image.append({"key": sample.meta.key, "source": sample.meta.source})
    scores = metrics.score_images(confusions, data.classes, data.train_frequencies, seed=job.seed)
    base = metrics.baselines(counts, data.train_frequencies, data.classes)
    return {
        "n_images": len(results),
        "images": per_image,
        "scores": scores.to_dict(),
        "baselines": {name: s.to_dict() for name, s in base.items()},
        "confusions": confusions.tolist(),
    }


class _JobLog:
    """Route matseg and Lightning log records to the job's log.txt while it runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handler: logging.Handler | None = None

    def __enter__(self) -> logging.Logger:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(self.path, mode="w", encoding="utf-8")
        self.handler.setFormatter(
            logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
        )
        for name in ("matseg", "lightning", "lightning.pytorch"):
            logging.getLogger(name).addHandler(self.handler)
        logger = logging.getLogger("matseg")
        logger.setLevel(logging.INFO)
        return logger

    def __exit__(self, *exc: object) -> None:
        for name in ("matseg", "lightning", "lightning.pytorch"):
            logging.getLogger(name).removeHandler(self.handler)  # type: ignore[arg-type]
        if self.handler is not None:
            self.handler.close()


def _train(job: Job, data: PreparedData, folder: Path, progress_bar: bool) -> tuple[FitResult, Any]:
    """The job's model, seeded and built, trained on its train split; and its weights' source."""
    torch.manual_seed(job.seed)  # random initialisation is part of the seeded protocol
    model, weights = build_model(
        job.encoder, job.decoder, data.in_channels, len(data.classes), job.weights, job.weights_url
    )
    log.info("weights: %s", weights)
    train, val = data.dataset.split("train"), data.dataset.split("val")
    fitted = fit(
        model,
        train,
        val,
        len(data.classes),
        job.training,
        job.seed,
        data.inspection.spec.ignore_index,
        folder,
        progress_bar,
    )
    return fitted, weights


def run_job(
    job: Job, data: PreparedData, folder: Path, progress_bar: bool = True
) -> dict[str, Any]:
    """Train and evaluate one job into ``folder``; return what ``metrics.json`` holds.

    In a multi-device job started by a cluster launcher, every process calls this; the
    processes other than rank 0 train in step with it and write nothing (they return {}).
    """
    if process_rank() != 0:
        _train(job, data, folder, progress_bar=False)
        return {}
    with _JobLog(folder / "log.txt") as logger:
        logger.info("job %s: %s", job.hash, job.label())
        fitted, weights = _train(job, data, folder, progress_bar)
        logger.info(
            "trained %d epochs in %.1f s (%s); best val IoU %.4f at epoch %d",
            fitted.epochs_run,
            fitted.seconds,
            fitted.stopped_by,
            fitted.best_val_iou,
            fitted.best_epoch,
        )
        save_weights(fitted.model, folder / "model.safetensors")
        write_bytes(folder / "curves.csv", _curves_csv(fitted.history))
        channels_last = uses_channels_last(job.training)
        evaluations = {
            split: evaluate_split(fitted.model, data, split, job, folder, channels_last)
            for split in data.inspection.split.splits
            if split not in ("train", "val") and data.inspection.split.splits[split]
        }
        result = {
            "job": job.model_dump(mode="json"),
            "classes": data.classes,
            "weights": vars(weights) if hasattr(weights, "__dict__") else dict(weights),
            "parameters": sum(p.numel() for p in fitted.model.parameters()),
            "latency_ms_256": _latency_ms(fitted.model, data.in_channels),
            "epochs": fitted.epochs_run,
            "best_epoch": fitted.best_epoch,
            "best_val_iou": fitted.best_val_iou,
            "stopped_by": fitted.stopped_by,
            "train_seconds": fitted.seconds,
            "train_class_frequencies": data.train_frequencies.tolist(),
            "evaluations": evaluations,
            "provenance": {
                "matseg": __version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
                "machine": platform.machine(),
                "processor": platform.processor(),
                "threads": torch.get_num_threads(),
            },
        }
        logger.info("test: %s", {s: e["scores"].get("macro_iou") for s, e in evaluations.items()})
    write_json(folder / METRICS_FILE, result)
    return result
