"""Quality control of a run: fit typicality on a job's data, score new images, evaluate shifts.

A thin run-folder layer over :class:`~matseg.qc.quality.TypicalityQC`. Data flow: run folder ->
the job's model and dataset -> patches -> embeddings (per extractor) -> detectors fitted on the
TRAIN split's patches -> a threshold fixed on the VALIDATION split (``accept`` of its patches
accepted) -> scores, flags and, against each shift scenario, the OOD metrics with the TEST split
as the in-distribution side -> a readiness verdict.

Everything lands in the job's qc folder of the run (:meth:`RunDir.qc_file`): ``embeddings.npz``
(the fitted state: detectors are refitted from it, deterministically, instead of pickling
estimators), ``qc.json`` (settings, threshold, scenario reports, verdict) and ``scores.csv``.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from matseg.atomic import write_bytes, write_csv, write_json
from matseg.datasets.discover import expand_file
from matseg.datasets.loading import ItemLoader, resize_pair
from matseg.datasets.readers import input_files, normalise
from matseg.datasets.spec import DatasetSpec, load_spec
from matseg.errors import DataError, SpecError
from matseg.job import PreparedData
from matseg.plan import Job
from matseg.profile import QualityControl
from matseg.qc.evaluation import OODReport, evaluate_scores
from matseg.qc.patches import Patches, image_scores
from matseg.qc.quality import NEW, TEST, TRAIN, VAL, Scored, TypicalityQC
from matseg.qc.shifts import SHIFTS, STRENGTHS, apply_shift
from matseg.rundir import EMBEDDINGS_FILE, NEW_SCORES_FILE, QC_FILE, SCORES_FILE, RunDir
from matseg.trained import TrainedJob, load_trained

Progress = Callable[[str], None]
SYNTHETIC = 1000  # seed offset (beyond NEW) of the synthetic shifts' patches


# --- the job ------------------------------------------------------------------------------------


@dataclass
class LoadedJob:
    """A finished job of a run (its model and dataset) and the quality-control settings."""

    trained: TrainedJob
    settings: QualityControl

    @property
    def run(self) -> RunDir:
        return self.trained.run

    @property
    def job(self) -> Job:
        return self.trained.job

    @property
    def model(self) -> Any:
        """The network whose encoder embeds images (an ensemble's best member)."""
        return self.trained.feature_model

    @property
    def data(self) -> PreparedData:
        return self.trained.data

    @property
    def folder(self) -> Path:
        return self.run.qc_dir(self.trained.name)

    def file(self, name: str) -> Path:
        return self.run.qc_file(self.trained.name, name)

    def estimator(self) -> TypicalityQC:
        """A fresh (unfitted) estimator of these settings on this job's model."""
        return TypicalityQC.from_settings(self.settings, self.model)


def load_job(
    run: RunDir | Path,
    job: str | None = None,
    settings: QualityControl | None = None,
    data: PreparedData | None = None,
) -> LoadedJob:
    """The trained model (weights from the job's safetensors) and its dataset, ready to embed."""
    run = run if isinstance(run, RunDir) else RunDir.existing(run)
    trained = load_trained(run, job, data)
    return LoadedJob(trained, settings or run.qc_settings())


# --- images -------------------------------------------------------------------------------------


def split_images(data: PreparedData, split: str) -> list[tuple[str, np.ndarray]]:
    """(key, normalised whole image) of one split of the job's dataset."""
    return _images(data.dataset.split(split))


def _images(dataset: Any) -> list[tuple[str, np.ndarray]]:
    return [(dataset[i].meta.key, dataset[i].image) for i in range(len(dataset))]


def fit_images(loaded: LoadedJob, split: str) -> list[tuple[str, np.ndarray]]:
    """The images QC fits on (``train``), calibrates on (``val``) and takes as in-distribution
    test (``test``). A fold model (alone, or an ensemble's best member) trained on its fold's
    training part, so it fits on that and calibrates on the fold's held-out images, which it
    never saw: the spec's val split may have been among its training images."""
    fold = loaded.trained.result.fold
    cv = loaded.job.fold
    if fold is None or (split == "test" and cv is not None and cv.test == "keep"):
        return split_images(loaded.data, split)
    # with evaluation.test = none the test images were development images: the fold's inner
    # validation part (used to stop early, never to fit) stands in as in-distribution test
    keys = {"train": fold.train, "val": fold.held_out, "test": fold.inner_val}[split]
    return _images(loaded.data.dataset.subset(keys, split))


def read_images(spec: DatasetSpec, paths: Sequence[Path]) -> list[tuple[str, np.ndarray]]:
    """Images outside any split, read and normalised the way ``spec`` reads its own.

    A folder stands for every supported file in it; volumes give one image per slice.
    """
    unlabelled = spec.model_copy(update={"masks": None, "encoding": None})
    loader = ItemLoader(unlabelled)
    files = input_files(paths, "an image file or a folder of images")
    out = []
    for path in files:
        for item in expand_file(path, None, unlabelled, ""):
            decoded = loader.load(item)
            image, _ = resize_pair(decoded.image, None, spec.tiling)
            out.append((item.key, normalise(image, spec.normalise)))
    return out


def scenario_images(
    source: str, fallback: DatasetSpec | None
) -> tuple[str, list[tuple[str, np.ndarray]]]:
    """A scenario from a dataset spec (all its images, read its own way) or a folder of images."""
    path = Path(source).expanduser()
    if path.suffix == ".json" and path.is_file():
        spec = load_spec(path)
        from matseg.datasets.check import inspect_dataset

        ins = inspect_dataset(spec)
        dataset = ins.dataset()
        seen: dict[str, np.ndarray] = {}
        for i in range(len(dataset)):
            sample = dataset[i]
            seen.setdefault(sample.meta.key, sample.image)
        return spec.name, list(seen.items())
    if fallback is None:
        raise SpecError(source, "a dataset spec (.json) for this scenario", "a folder or file")
    return path.name, read_images(fallback, [path])


# --- fit --------------------------------------------------------------------------------------


@dataclass
class FittedQC:
    """A job's quality control, fitted: the estimator and the ID test patches' scores."""

    loaded: LoadedJob
    qc: TypicalityQC
    id_test: dict[str, np.ndarray] = field(default_factory=dict)  # detector -> test patch scores
    id_test_patches: Patches | None = None

    @property
    def detectors(self) -> dict[str, Any]:
        return self.qc.detectors_

    @property
    def thresholds(self) -> dict[str, float]:
        return self.qc.thresholds_


def fit_qc(loaded: LoadedJob, progress: Progress | None = None) -> FittedQC:
    """Fit on train patches, fix thresholds on val patches, score test patches; save the state."""
    say = progress or (lambda _: None)
    s = loaded.settings
    qc = loaded.estimator()
    splits = loaded.data.inspection.split.splits
    say("cutting patches of train / val / test")
    sets = {}
    for split, offset in (("train", TRAIN), ("val", VAL), ("test", TEST)):
        if not splits.get(split):
            raise DataError(f"dataset {loaded.job.dataset}", f"a non-empty {split} split", "none")
        sets[split] = qc.patches(fit_images(loaded, split), offset)
    say(
        f"embedding {sum(len(p.owners) for p in sets.values())} patches ({', '.join(s.extractors)})"
    )
    emb = {split: qc.embed(p) for split, p in sets.items()}
    say(f"fitting {', '.join(qc.detector_names)}")
    qc.fit_embeddings(emb["train"], emb["val"], loaded.data.in_channels)
    for name, reason in qc.skipped_.items():
        say(f"note: compared detector {name} skipped: it {reason}")
    id_test = {name: det.score_samples(emb["test"]) for name, det in qc.detectors_.items()}
    arrays = {f"{split}/{ext}": x for split, e in emb.items() for ext, x in e.items()}
    arrays.update({f"{split}/owners": np.array(p.owners) for split, p in sets.items()})
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes(loaded.file(EMBEDDINGS_FILE), buf.getvalue())
    return FittedQC(loaded, qc, id_test, sets["test"])


def load_fitted(loaded: LoadedJob) -> FittedQC:
    """Refit from the saved embeddings (deterministic; no pickled estimators)."""
    path = loaded.file(EMBEDDINGS_FILE)
    if not path.exists():
        raise SpecError(
            str(path), "fitted quality control", "none", f"matseg qc fit --run {loaded.run.root}"
        )
    s = loaded.settings
    remedy = f"matseg qc fit --run {loaded.run.root}"
    try:
        with np.load(path, allow_pickle=False) as npz:
            saved = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        found = f"a damaged file ({exc})"
        raise SpecError(str(path), "saved QC embeddings", found, remedy) from None

    def get(split: str) -> dict[str, np.ndarray]:
        missing = [e for e in s.extractors if f"{split}/{e}" not in saved]
        if missing:
            raise SpecError(
                str(path), f"embeddings for {s.extractors}", f"missing {missing}", remedy
            )
        return {e: saved[f"{split}/{e}"] for e in s.extractors}

    qc = loaded.estimator().fit_embeddings(get("train"), get("val"), loaded.data.in_channels)
    id_test = {n: d.score_samples(get("test")) for n, d in qc.detectors_.items()}
    if "test/owners" not in saved:
        raise SpecError(str(path), "the test patches' owners", "none", remedy)
    owners = [str(o) for o in saved["test/owners"]]
    test = Patches(np.zeros((len(owners), 0, 0, 0), np.float32), owners, [])
    return FittedQC(loaded, qc, id_test, test)


# --- scoring and evaluation --------------------------------------------------------------------


def score(fitted: FittedQC, images: list[tuple[str, np.ndarray]], seed: int = 0) -> Scored:
    """Every detector's scores of the images' patches (drawn together, seed ``NEW + seed``)."""
    return fitted.qc.score_patches(images, NEW + seed)


def scenario_report(fitted: FittedQC, scored: Scored) -> dict[str, Any]:
    """Per detector: patch-level OOD metrics against the ID test patches, plus image-level AUROC."""
    assert fitted.id_test_patches is not None
    out = {}
    for name, ood in scored.scores.items():
        rep: OODReport = evaluate_scores(fitted.id_test[name], ood, fitted.thresholds[name])
        row = rep.as_dict()
        id_img = np.array(list(image_scores(fitted.id_test_patches, fitted.id_test[name]).values()))
        ood_img = np.array(list(image_scores(scored.patches, ood).values()))
        row["n_id_images"], row["n_ood_images"] = len(id_img), len(ood_img)
        row["ood_images_flagged"] = float((ood_img < fitted.thresholds[name]).mean())
        out[name] = row
    return out


def verdict(settings: QualityControl, scenarios: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Ready when the chosen detector's AUROC reaches ``ready_auroc`` on every declared scenario."""
    name = settings.detector
    failing = {
        sc: rep[name]["auroc"]
        for sc, rep in scenarios.items()
        if rep[name]["auroc"] < settings.ready_auroc
    }
    return {
        "detector": name,
        "ready": bool(scenarios) and not failing,
        "ready_auroc": settings.ready_auroc,
        "scenarios": len(scenarios),
        "failing": failing,
        "reason": "no shift scenario declared: readiness cannot be judged"
        if not scenarios
        else (
            "every declared shift is detected"
            if not failing
            else "shift not reliably detected: "
            + ", ".join(f"{k} (AUROC {v:.3f})" for k, v in failing.items())
        ),
    }


def evaluate_qc(
    fitted: FittedQC,
    sources: Sequence[str] = (),
    synthetic: bool | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Score every scenario: the dataset's extra splits, ``sources``, synthetic shifts of test.

    Writes ``qc.json`` and ``scores.csv`` into the job's qc folder and returns what qc.json holds.
    """
    say = progress or (lambda _: None)
    loaded, s = fitted.loaded, fitted.loaded.settings
    declared: dict[str, list[tuple[str, np.ndarray]]] = {}
    for split, items in loaded.data.inspection.split.splits.items():
        if split not in ("train", "val", "test") and items:
            declared[f"split:{split}"] = split_images(loaded.data, split)
    for source in [*s.scenarios, *sources]:
        name, images = scenario_images(source, loaded.data.inspection.spec)
        declared[name] = images
    scenarios, rows = {}, []
    for n, (name, images) in enumerate(declared.items()):
        say(f"scenario {name}: {len(images)} images")
        scored = score(fitted, images, seed=n)
        scenarios[name] = scenario_report(fitted, scored)
        rows.extend(fitted.qc.image_rows(scored, name))
    synthetic_reports: dict[str, dict[str, Any]] = {}
    if s.synthetic_shifts if synthetic is None else synthetic:
        test_images = split_images(loaded.data, "test")
        for shift in SHIFTS:
            for strength in STRENGTHS:
                say(f"synthetic shift {shift} {strength}")
                shifted = [
                    (f"{key}~{shift}{strength}", apply_shift(img, shift, strength, seed=i))
                    for i, (key, img) in enumerate(test_images)
                ]
                scored = score(fitted, shifted, seed=SYNTHETIC)
                synthetic_reports[f"{shift}@{strength}"] = scenario_report(fitted, scored)
    id_flagged = (
        {
            name: float(
                (
                    np.array(list(image_scores(fitted.id_test_patches, sc).values()))
                    < fitted.thresholds[name]
                ).mean()
            )
            for name, sc in fitted.id_test.items()
        }
        if fitted.id_test_patches is not None
        else {}
    )
    result = {
        "job": loaded.trained.name,
        "job_label": loaded.trained.label,
        "settings": s.model_dump(mode="json"),
        "convention": "score = typicality (higher = more in-distribution); ID = the test split's "
        "patches; thresholds fixed on the validation split before any shifted data",
        "thresholds": fitted.thresholds,
        "id_test_patches_flagged": {
            n: float((sc < fitted.thresholds[n]).mean()) for n, sc in fitted.id_test.items()
        },
        "id_test_images_flagged": id_flagged,
        "scenarios": scenarios,
        "synthetic": synthetic_reports,
        "verdict": verdict(s, scenarios),
        "skipped_detectors": fitted.qc.skipped_,
    }
    test_rows = fitted.qc.image_rows(Scored(fitted.id_test_patches, fitted.id_test), "id:test")
    write_csv(loaded.file(SCORES_FILE), test_rows + rows)
    write_json(loaded.file(QC_FILE), result)
    return result


def score_arrays(fitted: FittedQC, images: list[tuple[str, np.ndarray]]) -> list[dict[str, Any]]:
    """Per-image typicality and flags of prepared (C, H, W) images, each scored on its own."""
    return fitted.qc.verdicts(images, "new")


def score_new_images(fitted: FittedQC, paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Per-image typicality and flags of new image files (streaming: each scored on its own)."""
    rows = score_arrays(fitted, read_images(fitted.loaded.data.inspection.spec, paths))
    write_csv(fitted.loaded.file(NEW_SCORES_FILE), rows)
    return rows
