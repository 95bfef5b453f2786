"""One job, start to finish: data, model, training, its ONE evaluation, files in its folder.

The dataset is inspected once per run (:func:`prepare_dataset`, once per worker process at
most) and shared by the jobs on it. A holdout job trains on the train split, stops early on val
and evaluates val (the evidence the recommendation compares), the test split and shift sets. A
cross-validation job (one fold) trains on the fold's training part, stops early on its inner
validation part and evaluates only its held-out part (``oof``): the test split and shift sets
are scored once at the end, by the fold ensembles (:mod:`matseg.ensemble`). A job writes,
through the run folder, its weights, curves, predicted masks, a figure of sample predictions
(drawn while the predictions are in memory) and, last, ``metrics.json``
(:class:`~matseg.results.JobResult`), whose presence means it finished.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from matseg import __version__, metrics
from matseg.atomic import finite_or_none, write_bytes
from matseg.datasets.check import Inspection
from matseg.datasets.dataset import MicrographDataset
from matseg.datasets.discover import Item
from matseg.datasets.fingerprint import fingerprint
from matseg.datasets.folds import Fold, cross_validation_folds
from matseg.datasets.load import usable_inspection
from matseg.datasets.spec import DatasetSpec
from matseg.errors import DataError
from matseg.models import build_model, save_weights
from matseg.plan import CvFold, Job
from matseg.plots import sample_predictions_png
from matseg.profile import Training
from matseg.quantities import (
    QuantityError,
    Scale,
    Target,
    compare_many,
    default_quantities,
    measure_many,
)
from matseg.results import (
    OOF,
    FoldImages,
    ImageRef,
    JobProvenance,
    JobResult,
    QuantityValues,
    Scores,
    SplitResult,
    WeightsLoaded,
    late_gain,
)
from matseg.rundir import DatasetFacts, RunDir
from matseg.training import FitResult, fit, predict, process_rank, uses_channels_last

log = logging.getLogger(__name__)

SAMPLE_IMAGES = 3  # images in a job's sample-predictions figure
SAMPLE_SPLITS = ("test", OOF)  # the splits it is drawn from


@dataclass(frozen=True)
class JobData:
    """What one job trains on, stops early on, and evaluates (split name -> images)."""

    train: MicrographDataset
    val: MicrographDataset
    evaluate: dict[str, MicrographDataset]
    train_frequencies: np.ndarray
    fold: Fold | None = None


@dataclass
class PreparedData:
    """A dataset inspected once per run and shared by its jobs and later stages."""

    inspection: Inspection
    classes: list[str]
    in_channels: int
    train_frequencies: np.ndarray
    dataset: MicrographDataset  # every split, built once per run and shared by the jobs
    _truth: dict[tuple[str, object], list[float]] = field(default_factory=dict, repr=False)
    _folds: dict[tuple[int, int, int, str, float], list[Fold]] = field(
        default_factory=dict, repr=False
    )

    @property
    def spec(self) -> DatasetSpec:
        return self.inspection.spec

    def frequencies(self, keys: Iterable[str]) -> np.ndarray:
        """Pixel share of each class over the images ``keys`` (the majority baseline's input)."""
        counts = np.zeros(len(self.classes))
        for key in keys:
            for cls, n in (self.inspection.stats[key].class_counts or {}).items():
                if 0 <= cls < len(self.classes):
                    counts[cls] += n
        return counts / max(counts.sum(), 1)

    def split_keys(self, name: str) -> list[str]:
        """The image keys of one of the spec's splits."""
        return [item.key for item in self.inspection.split.splits.get(name, [])]

    def development_items(self, test: str = "keep") -> list[Item]:
        """The images cross-validation folds: train + val, and test too when ``test='none'``."""
        splits = self.inspection.split.splits
        names = ("train", "val", "test") if test == "none" else ("train", "val")
        return [item for name in names for item in splits.get(name, [])]

    def presence(self) -> dict[str, frozenset[int]]:
        """Image key -> the class ids present in its mask (what balances the folds)."""
        return {
            key: frozenset(c for c, n in (stats.class_counts or {}).items() if n)
            for key, stats in self.inspection.stats.items()
        }

    def folds(self, cv: CvFold) -> list[Fold]:
        """Every fold of the cross-validation ``cv`` belongs to (drawn once per dataset)."""
        key = (cv.folds, cv.repeats, cv.seed, cv.test, cv.inner_val)
        if key not in self._folds:
            items = self.development_items(cv.test)
            self._folds[key] = cross_validation_folds(
                items, cv.folds, cv.repeats, cv.seed, self.presence(), cv.inner_val
            )
        return self._folds[key]

    def truth_quantities(self, keys: Iterable[str]) -> dict[str, float | None]:
        """Mean over the images ``keys`` of each default quantity of their ground truth: what
        the constant-quantity baseline predicts for every image (its training split's mean)."""
        targets = [Target(q, c, self.classes[c]) for q, c in default_quantities(self.classes)]
        wanted = [(t.quantity, t.class_id) for t in targets]
        spec = self.inspection.spec
        scale = Scale(spec.pixel_size_um)
        subset = self.dataset.subset(list(keys), "train")
        values = []
        for ref_index in range(len(subset)):
            ref = subset.refs[ref_index]
            where = (ref.item.key, ref.window)
            if where not in self._truth:
                mask = subset[ref_index].mask
                assert mask is not None
                found = measure_many(mask, wanted, scale, spec.ignore_index)
                self._truth[where] = [m.value for m in found]
            values.append(self._truth[where])
        table = np.array(values, dtype=float).reshape(len(values), len(targets))
        out: dict[str, float | None] = {}
        for t, column in zip(targets, table.T, strict=True):
            ok = column[np.isfinite(column)]
            out[t.name] = float(ok.mean()) if ok.size else None
        return out

    def for_job(self, job: Job) -> JobData:
        """The job's parts: the spec's splits (holdout), or its fold's (cross-validation)."""
        splits = self.inspection.split.splits
        if job.fold is None:
            evaluate = [s for s in splits if s != "train" and splits[s]]
            return JobData(
                train=self.dataset.split("train"),
                val=self.dataset.split("val"),
                evaluate={s: self.dataset.split(s) for s in sorted(evaluate)},
                train_frequencies=self.train_frequencies,
            )
        folds = self.folds(job.fold)
        fold = folds[job.fold.repeat * job.fold.folds + job.fold.index]
        return JobData(
            train=self.dataset.subset(fold.train, "train"),
            val=self.dataset.subset(fold.inner_val, "val"),
            evaluate={OOF: self.dataset.subset(fold.held_out, OOF)},
            train_frequencies=self.frequencies(fold.train),
            fold=fold,
        )

    def facts(self) -> DatasetFacts:
        """What ``fingerprint.json`` keeps of this dataset for the record."""
        ins = self.inspection
        leaks = [
            f"{'identical' if leak.exact else 'near-duplicate'} images across splits: "
            f"{leak.a} ({leak.split_a}) and {leak.b} ({leak.split_b}), pHash distance "
            f"{leak.distance}"
            for leak in ins.leaks
        ]
        return DatasetFacts(
            name=ins.spec.name,
            classes=self.classes,
            in_channels=self.in_channels,
            train_class_frequencies=self.train_frequencies.tolist(),
            splits={name: len(items) for name, items in ins.split.splits.items()},
            fingerprint=finite_or_none(fingerprint(ins)),
            leakage_warnings=leaks,
        )


def prepare_dataset(
    spec: DatasetSpec, classes: list[str] | None = None, cache_dir: Path | None = None
) -> PreparedData:
    """Inspect a dataset (the one read of every item); refuse one that is not usable."""
    ins, rep = usable_inspection(spec, cache_dir)
    name = f"dataset {spec.name}"
    classes = classes or rep.classes
    channels = {int(c) for c in rep.channels}
    if len(channels) != 1:
        raise DataError(name, "one channel count for all images", f"{sorted(channels)}")
    train_keys = [i.key for i in ins.split.splits.get("train", [])]
    if not train_keys or not ins.split.splits.get("val"):
        raise DataError(name, "non-empty train and val splits", f"{rep.splits}")
    data = PreparedData(ins, classes, channels.pop(), np.zeros(0), ins.dataset(cache_dir))
    data.train_frequencies = data.frequencies(train_keys)
    return data


def prepare_for_job(job: Job, run: RunDir) -> PreparedData:
    """The job's dataset, inspected with the run's decode cache."""
    return prepare_dataset(job.spec, job.classes, run.cache_dir(job.dataset))


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


MaskWriter = Callable[[str, str, np.ndarray], object]  # (split, image key, class ids)


def evaluate_split(
    model: torch.nn.Module,
    dataset: MicrographDataset,
    split: str,
    training: Training,
    seed: int,
    train_frequencies: np.ndarray,
    save_mask: MaskWriter | None = None,
    figure: Path | None = None,
) -> SplitResult:
    """Predict a split once and score it (with baselines on the same images, the majority class
    taken from ``train_frequencies``, what the model trained on); ``save_mask`` keeps each
    predicted mask, and ``figure`` (test or out-of-fold splits) gets a figure of the first few
    predictions, drawn while they are in memory."""
    spec = dataset.spec
    classes = dataset.classes
    k = len(classes)
    channels_last = uses_channels_last(training)
    results = predict(model, dataset, training.precision, channels_last, training.tta)
    confusions = np.zeros((len(results), k, k), dtype=np.int64)
    counts = np.zeros((len(results), k), dtype=np.int64)
    images = []
    samples = []
    measured = QuantityRecorder(
        classes, Scale(spec.pixel_size_um), spec.ignore_index, split not in (OOF, "val")
    )
    for n, (sample, pred) in enumerate(results):
        assert sample.mask is not None
        confusions[n] = metrics.confusion_matrix(pred, sample.mask, k, spec.ignore_index)
        measured.add(sample.mask, pred)
        counts[n] = confusions[n].sum(axis=1)
        if save_mask is not None:
            save_mask(split, sample.meta.key, pred)
        images.append(ImageRef(key=sample.meta.key, source=sample.meta.source))
        if figure is not None and split in SAMPLE_SPLITS and len(samples) < SAMPLE_IMAGES:
            samples.append((sample.meta.key, sample.image, sample.mask, pred))
    if samples and figure is not None:
        write_bytes(figure, sample_predictions_png(samples, spec.ignore_index))
    scores = metrics.score_images(confusions, classes, train_frequencies, seed=seed)
    base = metrics.baselines(counts, train_frequencies, classes)
    return SplitResult(
        n_images=len(results),
        images=images,
        scores=Scores.model_validate(scores.to_dict()),
        baselines={name: Scores.model_validate(s.to_dict()) for name, s in base.items()},
        confusions=confusions.tolist(),
        quantities=measured.values(),
    )


class QuantityRecorder:
    """The default quantities (:func:`matseg.quantities.default_quantities`) of each image's
    ground truth and prediction, gathered while the split is predicted; pixels ignored in the
    ground truth are ignored in the prediction too. ``distributions``: also keep the pooled
    feature sizes of truth and prediction (for the report's overlaid size distributions)."""

    KEPT = "feature_size"  # the distribution kept, per feature class

    def __init__(
        self, classes: list[str], scale: Scale, ignore_index: int, distributions: bool = False
    ) -> None:
        self.scale = scale
        self.ignore = ignore_index
        self.distributions = distributions
        self.targets = [Target(qn, c, classes[c]) for qn, c in default_quantities(classes)]
        self.rows: dict[str, list[QuantityError]] = {t.name: [] for t in self.targets}

    def add(self, truth: np.ndarray | torch.Tensor, predicted: np.ndarray | torch.Tensor) -> None:
        t = np.asarray(truth.cpu() if isinstance(truth, torch.Tensor) else truth).astype(np.int64)
        p = np.asarray(
            predicted.cpu() if isinstance(predicted, torch.Tensor) else predicted
        ).astype(np.int64)
        p = np.where(t == self.ignore, self.ignore, p)
        for target, error in zip(
            self.targets, compare_many(t, p, self.targets, self.scale, self.ignore), strict=True
        ):
            self.rows[target.name].append(error)

    def values(self) -> dict[str, QuantityValues]:
        return {
            name: QuantityValues(
                unit=rows[0].unit if rows else "",
                truth=[_finite(e.truth) for e in rows],
                predicted=[_finite(e.predicted) for e in rows],
                ks=[_finite(e.ks) for e in rows],
                wasserstein=[_finite(e.wasserstein) for e in rows],
                truth_distribution=self._pooled(name, rows, "truth_measurement"),
                predicted_distribution=self._pooled(name, rows, "predicted_measurement"),
            )
            for name, rows in self.rows.items()
        }

    def _pooled(self, name: str, rows: list[QuantityError], side: str) -> list[list[float]]:
        if not self.distributions or not name.startswith(self.KEPT + ":"):
            return []
        out = []
        for e in rows:
            m = getattr(e, side)
            if m is not None:
                out += [[float(v), float(w)] for v, w in zip(m.values, m.weights, strict=True)
                        if np.isfinite(v)]  # fmt: skip
        return out


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def draw_samples(run: RunDir, result: JobResult, data: PreparedData) -> Path | None:
    """The sample-predictions figure of a finished job, from its saved test (or out-of-fold)
    predictions (what :func:`evaluate_split` draws in memory); None without either."""
    name = next((s for s in SAMPLE_SPLITS if s in result.evaluations), None)
    if name is None:
        return None
    test = result.evaluations[name]
    wanted = [i.key for i in test.images[:SAMPLE_IMAGES]]
    split = data.dataset.subset(wanted, name)
    samples = {}
    for i in range(len(split)):
        sample = split[i]
        if sample.meta.key in wanted and sample.meta.key not in samples:
            samples[sample.meta.key] = sample
    rows = [
        (
            key,
            samples[key].image,
            samples[key].mask,
            run.read_prediction(result.job.hash, name, key),
        )
        for key in wanted
        if key in samples and samples[key].mask is not None
    ]
    if not rows:
        return None
    png = sample_predictions_png(rows, data.spec.ignore_index)  # type: ignore[arg-type]
    return write_bytes(run.sample_figure(result.job.hash), png)


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


def _train(
    job: Job, data: PreparedData, parts: JobData, folder: Path, progress_bar: bool
) -> tuple[FitResult, WeightsLoaded]:
    """The job's model, seeded and built, trained on its training part; and its weights'
    source."""
    torch.manual_seed(job.seed)  # random initialisation is part of the seeded protocol
    model, weights = build_model(
        job.encoder, job.decoder, data.in_channels, len(data.classes), job.weights, job.weights_url
    )
    log.info("weights: %s", weights)
    fitted = fit(
        model,
        parts.train,
        parts.val,
        len(data.classes),
        job.training,
        job.seed,
        data.spec.ignore_index,
        folder,
        progress_bar,
    )
    return fitted, WeightsLoaded.model_validate(vars(weights))


def run_job(
    job: Job, data: PreparedData, run: RunDir, progress_bar: bool = True
) -> JobResult | None:
    """Train and evaluate one job into its folder of ``run``; return what metrics.json holds.

    In a multi-device job started by a cluster launcher, every process calls this; the
    processes other than rank 0 train in step with it and write nothing (they return None).
    """
    folder = run.job_dir(job.hash)
    parts = data.for_job(job)
    if process_rank() != 0:
        _train(job, data, parts, folder, progress_bar=False)
        return None
    with _JobLog(run.job_log(job.hash)) as logger:
        logger.info("job %s: %s", job.hash, job.label())
        if parts.fold is not None:
            logger.info(
                "fold %s: %d training, %d inner validation, %d held-out images",
                parts.fold.name, len(parts.fold.train), len(parts.fold.inner_val),
                len(parts.fold.held_out),
            )  # fmt: skip
        fitted, weights = _train(job, data, parts, folder, progress_bar)
        logger.info(
            "trained %d epochs in %.1f s (%s); best val IoU %.4f at epoch %d",
            fitted.epochs_run,
            fitted.seconds,
            fitted.stopped_by,
            fitted.best_val_iou,
            fitted.best_epoch,
        )
        save_weights(fitted.model, run.weights_file(job.hash))
        run.write_curves(job.hash, fitted.history)
        evaluations = {
            split: evaluate_split(
                fitted.model, dataset, split, job.training, job.seed, parts.train_frequencies,
                lambda split, key, mask: run.write_prediction(job.hash, split, key, mask),
                run.sample_figure(job.hash),
            )
            for split, dataset in parts.evaluate.items()
        }  # fmt: skip
        result = JobResult(
            job=job,
            classes=data.classes,
            in_channels=data.in_channels,
            weights=weights,
            parameters=sum(p.numel() for p in fitted.model.parameters()),
            latency_ms_256=_latency_ms(fitted.model, data.in_channels),
            epochs=fitted.epochs_run,
            best_epoch=fitted.best_epoch,
            best_val_iou=fitted.best_val_iou,
            stopped_by=fitted.stopped_by,
            train_seconds=fitted.seconds,
            train_class_frequencies=parts.train_frequencies.tolist(),
            train_quantities=data.truth_quantities(
                parts.fold.train if parts.fold is not None else data.split_keys("train")
            ),
            late_val_gain=late_gain([row["val_iou"] for row in fitted.history]),
            fold=None if parts.fold is None else FoldImages.of(parts.fold),
            evaluations=evaluations,
            provenance=JobProvenance(
                matseg=__version__,
                torch=torch.__version__,
                python=platform.python_version(),
                machine=platform.machine(),
                processor=platform.processor(),
                threads=torch.get_num_threads(),
            ),
        )
        logger.info("macro IoU: %s", {s: e.scores.macro_iou for s, e in evaluations.items()})
    run.write_result(result)
    return result
