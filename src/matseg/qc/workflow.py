"""Quality control of a run: fit typicality on a job's data, score new images, evaluate shifts.

Data flow: run folder -> the job's model and dataset -> patches -> embeddings (per extractor)
-> detectors fitted on the TRAIN split's patches -> a threshold fixed on the VALIDATION split
(``accept`` of its patches accepted) -> scores, flags and, against each shift scenario, the
OOD metrics with the TEST split as the in-distribution side -> a readiness verdict.

Everything lands in ``<run>/qc/<job>/``: ``embeddings.npz`` (the fitted state: detectors are
refitted from it, deterministically, instead of pickling estimators), ``qc.json`` (settings,
threshold, scenario reports, verdict) and ``scores.csv`` (per image).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from matseg.atomic import write_bytes, write_json
from matseg.datasets.discover import expand_file
from matseg.datasets.loading import ItemLoader, resize_pair
from matseg.datasets.readers import input_files, match_channels, normalise
from matseg.datasets.spec import DatasetSpec, load_spec
from matseg.datasets.tiling import Window, cut, tile_windows
from matseg.errors import DataError, SpecError, read_json
from matseg.execution.job import PreparedData
from matseg.execution.trained import load_trained
from matseg.plan import Job
from matseg.profile import QualityControl
from matseg.qc.detectors import Embeddings, make_detector
from matseg.qc.evaluation import OODReport, acceptance_threshold, evaluate_scores
from matseg.qc.extractors import ExtractorContext, make_extractor
from matseg.qc.shifts import SHIFTS, STRENGTHS, apply_shift

Progress = Callable[[str], None]
QC_FILE = "qc.json"
EMBEDDINGS_FILE = "embeddings.npz"


# --- the job ------------------------------------------------------------------------------------


@dataclass
class LoadedJob:
    """A finished job of a run: its plan entry, trained model and dataset."""

    run: Path
    job: Job
    model: Any
    data: PreparedData
    settings: QualityControl

    @property
    def folder(self) -> Path:
        return self.run / "qc" / self.job.hash


def run_settings(run: Path) -> QualityControl:
    """The ``qc`` block of the run's profile (defaults when the profile has none)."""
    data = read_json(run / "profile.json", "the run's profile.json", SpecError)
    return QualityControl.model_validate(data.get("qc", {}))


def load_job(
    run: Path, job: str | None = None, settings: QualityControl | None = None
) -> LoadedJob:
    """The trained model (weights from the job's safetensors) and its dataset, ready to embed."""
    trained = load_trained(run, job)
    return LoadedJob(run, trained.job, trained.model, trained.data, settings or run_settings(run))


# --- patches ------------------------------------------------------------------------------------


@dataclass
class Patches:
    """Patches (N, C, s, s) of whole images, each knowing its image and window."""

    arrays: np.ndarray
    owners: list[str]  # image key per patch
    windows: list[Window]  # where each patch lies in its image


def cut_patches(
    images: Iterable[tuple[str, np.ndarray]], size: int, max_per_image: int, seed: int
) -> Patches:
    """Non-overlapping tiles of each (key, (C, H, W)) image, the last row / column flush (the
    dataset layer's tiling; smaller images padded); at most ``max_per_image``, chosen seeded."""
    arrays, owners, windows = [], [], []
    rng = np.random.default_rng(seed)
    for key, image in images:
        grid = tile_windows(int(image.shape[-2]), int(image.shape[-1]), size)
        if len(grid) > max_per_image:
            grid = [grid[i] for i in sorted(rng.choice(len(grid), max_per_image, replace=False))]
        for window in grid:
            patch, _ = cut(np.asarray(image), None, window, 0)
            arrays.append(patch.astype(np.float32, copy=False))
            owners.append(key)
            windows.append(window)
    if not arrays:
        raise DataError("quality control", "at least one image", "none")
    return Patches(np.stack(arrays), owners, windows)


def split_images(data: PreparedData, split: str) -> list[tuple[str, np.ndarray]]:
    """(key, normalised whole image) of one split of the job's dataset."""
    dataset = data.dataset.split(split)
    return [(dataset[i].meta.key, dataset[i].image) for i in range(len(dataset))]


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


# --- embeddings and detectors ------------------------------------------------------------------


def embed(loaded: LoadedJob, patches: Patches) -> Embeddings:
    """Every configured extractor's embedding of the patches (rows aligned)."""
    ctx = ExtractorContext(model=loaded.model, weights=dict(loaded.settings.weights))
    return {
        name: make_extractor(name, ctx).embed(patches.arrays) for name in loaded.settings.extractors
    }


def detector_names(settings: QualityControl) -> list[str]:
    return list(dict.fromkeys([settings.detector, *settings.compare]))


def fit_detectors(settings: QualityControl, train: Embeddings) -> dict[str, Any]:
    """Every detector of the settings, fitted on the training patches' embeddings."""
    return {
        name: make_detector(name, seed=settings.seed, k=settings.k).fit(train)
        for name in detector_names(settings)
    }


def image_scores(patches: Patches, scores: np.ndarray) -> dict[str, float]:
    """Median patch score per image: an image is as typical as its typical half."""
    by_image: dict[str, list[float]] = {}
    for owner, s in zip(patches.owners, scores, strict=True):
        by_image.setdefault(owner, []).append(float(s))
    return {key: float(np.median(v)) for key, v in by_image.items()}


# --- fit --------------------------------------------------------------------------------------


@dataclass
class FittedQC:
    """A job's quality control, fitted: detectors, thresholds and the ID embeddings used."""

    loaded: LoadedJob
    detectors: dict[str, Any]
    thresholds: dict[str, float]
    id_test: dict[str, np.ndarray] = field(default_factory=dict)  # detector -> test patch scores
    id_test_patches: Patches | None = None


def _id_sets(loaded: LoadedJob) -> dict[str, Patches]:
    s = loaded.settings
    splits = loaded.data.inspection.split.splits
    out = {}
    for n, split in enumerate(["train", "val", "test"]):
        if not splits.get(split):
            raise DataError(f"dataset {loaded.job.dataset}", f"a non-empty {split} split", "none")
        out[split] = cut_patches(
            split_images(loaded.data, split), s.patch_size, s.max_patches_per_image, s.seed + n
        )
    return out


def fit_qc(loaded: LoadedJob, progress: Progress | None = None) -> FittedQC:
    """Fit on train patches, fix thresholds on val patches, score test patches; save the state."""
    say = progress or (lambda _: None)
    s = loaded.settings
    say("cutting patches of train / val / test")
    sets = _id_sets(loaded)
    say(
        f"embedding {sum(len(p.owners) for p in sets.values())} patches ({', '.join(s.extractors)})"
    )
    emb = {split: embed(loaded, p) for split, p in sets.items()}
    say(f"fitting {', '.join(detector_names(s))}")
    detectors = fit_detectors(s, emb["train"])
    thresholds, id_test = {}, {}
    for name, det in detectors.items():
        thresholds[name] = acceptance_threshold(det.score_samples(emb["val"]), s.accept)
        id_test[name] = det.score_samples(emb["test"])
    arrays = {f"{split}/{ext}": x for split, e in emb.items() for ext, x in e.items()}
    arrays.update({f"{split}/owners": np.array(p.owners) for split, p in sets.items()})
    loaded.folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes(loaded.folder / EMBEDDINGS_FILE, buf.getvalue())
    return FittedQC(loaded, detectors, thresholds, id_test, sets["test"])


def load_fitted(loaded: LoadedJob) -> FittedQC:
    """Refit from the saved embeddings (deterministic; no pickled estimators)."""
    path = loaded.folder / EMBEDDINGS_FILE
    if not path.exists():
        raise SpecError(
            str(path), "fitted quality control", "none", f"matseg qc fit --run {loaded.run}"
        )
    saved = np.load(path)
    s = loaded.settings

    def get(split: str) -> Embeddings:
        missing = [e for e in s.extractors if f"{split}/{e}" not in saved]
        if missing:
            raise SpecError(
                str(path),
                f"embeddings for {s.extractors}",
                f"missing {missing}",
                "run qc fit again",
            )
        return {e: saved[f"{split}/{e}"] for e in s.extractors}

    detectors = fit_detectors(s, get("train"))
    thresholds = {
        n: acceptance_threshold(d.score_samples(get("val")), s.accept) for n, d in detectors.items()
    }
    id_test = {n: d.score_samples(get("test")) for n, d in detectors.items()}
    owners = [str(o) for o in saved["test/owners"]]
    test = Patches(np.zeros((len(owners), 0, 0, 0), np.float32), owners, [])
    return FittedQC(loaded, detectors, thresholds, id_test, test)


# --- scoring and evaluation --------------------------------------------------------------------


@dataclass
class Scored:
    """Scores of a set of patches by every detector, with the images they belong to."""

    patches: Patches
    scores: dict[str, np.ndarray]


def score(fitted: FittedQC, images: list[tuple[str, np.ndarray]], seed: int = 0) -> Scored:
    s = fitted.loaded.settings
    channels = fitted.loaded.data.in_channels
    images = [(key, match_channels(image, channels, "quality control")) for key, image in images]
    patches = cut_patches(images, s.patch_size, s.max_patches_per_image, s.seed + 100 + seed)
    emb = embed(fitted.loaded, patches)
    return Scored(patches, {n: d.score_samples(emb) for n, d in fitted.detectors.items()})


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


def _per_image_rows(fitted: FittedQC, scenario: str, scored: Scored) -> list[dict[str, Any]]:
    name = fitted.loaded.settings.detector
    threshold = fitted.thresholds[name]
    rows = []
    flags_by_image: dict[str, list[bool]] = {}
    for owner, s in zip(scored.patches.owners, scored.scores[name], strict=True):
        flags_by_image.setdefault(owner, []).append(bool(s < threshold))
    for key, value in image_scores(scored.patches, scored.scores[name]).items():
        rows.append(
            {
                "scenario": scenario,
                "image": key,
                "score": round(value, 6),
                "flagged": value < threshold,
                "patches": len(flags_by_image[key]),
                "patches_flagged": sum(flags_by_image[key]),
                "detector": name,
                "threshold": round(threshold, 6),
            }
        )
    return rows


def _csv(rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue().encode()


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
        rows.extend(_per_image_rows(fitted, name, scored))
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
                scored = score(fitted, shifted, seed=1000)
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
        "job": loaded.job.hash,
        "job_label": loaded.job.label(),
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
    }
    test_rows = _per_image_rows(fitted, "id:test", Scored(fitted.id_test_patches, fitted.id_test))
    write_bytes(loaded.folder / "scores.csv", _csv(test_rows + rows))
    write_json(loaded.folder / QC_FILE, result)
    return result


def score_arrays(fitted: FittedQC, images: list[tuple[str, np.ndarray]]) -> list[dict[str, Any]]:
    """Per-image typicality and flags of prepared (C, H, W) images, each scored on its own."""
    rows = []
    for key, image in images:
        rows.extend(_per_image_rows(fitted, "new", score(fitted, [(key, image)])))
    return rows


def score_new_images(fitted: FittedQC, paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Per-image typicality and flags of new image files (streaming: each scored on its own)."""
    rows = score_arrays(fitted, read_images(fitted.loaded.data.inspection.spec, paths))
    write_bytes(fitted.loaded.folder / "new_scores.csv", _csv(rows))
    return rows
