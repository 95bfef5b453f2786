"""The plan: a profile compiled, deterministically, into jobs (dataset x encoder x decoder x seed,
and x fold under cross-validation).

Each job carries everything that decides its result (the dataset spec as data with a digest of
its files, the model, the weights, the training protocol, the seed) and a content hash of exactly
that, which names its folder: a finished job is never redone, changing anything that matters
makes a new job, and moving the data (or the run) to another mount point changes nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from itertools import product
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from matseg.datasets.digest import data_digest
from matseg.datasets.spec import DatasetSpec
from matseg.models import (
    normalise_decoder,
    normalise_encoder,
    resolve_precision,
    resolve_weights,
)
from matseg.profile import (
    Evaluation,
    Explain,
    ModelGrid,
    Profile,
    QualityControl,
    Training,
    resolve_datasets,
)

INNER_VALIDATION = 0.15  # share of a fold's training images kept for early stopping


class CvFold(BaseModel):
    """Which fold of which cross-validation a job trains: what decides the fold's images.

    The images themselves are drawn when the job runs, from the inspected data
    (:func:`matseg.datasets.folds.cross_validation_folds` with these settings), the same for
    every combination, so out-of-fold predictions of all combinations pair up image by image.
    """

    model_config = ConfigDict(frozen=True)

    folds: int
    index: int
    repeat: int = 0
    repeats: int = 1  # how many repeats the plan has (not hashed: fold r of a repeat is the same)
    seed: int = 0
    test: str = "keep"  # "none": the spec's test images are development images too
    inner_val: float = INNER_VALIDATION

    @property
    def name(self) -> str:
        """``r0f3``: repeat 0, fold 3, as :class:`matseg.datasets.folds.Fold` names it."""
        return f"r{self.repeat}f{self.index}"


class Rung(BaseModel):
    """Which rung of successive halving a job trains (not hashed: the last rung's jobs are the
    grid's own, so a grid run and a halving run of one profile share them)."""

    model_config = ConfigDict(frozen=True)

    index: int
    rungs: int
    epochs: int

    @property
    def last(self) -> bool:
        return self.index == self.rungs - 1


class Job(BaseModel):
    """One trainable unit of a plan: everything that decides its result, and the hash of that."""

    model_config = ConfigDict(frozen=True)

    hash: str
    dataset: str
    encoder: str
    decoder: str
    weights: str
    weights_url: str | None
    seed: int
    spec: DatasetSpec  # with its root absolute, so the job finds its data on this machine
    data_digest: str | None = Field(
        default=None, description="sha256 of the dataset's files (absent in plans before 0.2)"
    )
    training: Training  # the profile's protocol, with ``seeds`` = [this job's seed]
    classes: list[str] | None
    fold: CvFold | None = Field(default=None, description="None: the holdout protocol")
    rung: Rung | None = Field(default=None, description="None: a grid search job")

    @model_validator(mode="before")
    @classmethod
    def _one_seed(cls, data: Any) -> Any:
        """Plans written before 0.2 kept the training block without seeds: give it this one."""
        if isinstance(data, dict) and isinstance(data.get("training"), dict):
            training = data["training"]
            if "seeds" not in training and "seed" in data:
                data = {**data, "training": {**training, "seeds": [data["seed"]]}}
        return data

    def label(self) -> str:
        fold = f" / fold {self.fold.name}" if self.fold is not None else ""
        rung = (
            f" / rung {self.rung.index + 1} of {self.rung.rungs} ({self.rung.epochs} epochs)"
            if self.rung is not None and not self.rung.last
            else ""
        )
        return f"{self.dataset} / {self.encoder} + {self.decoder} / seed {self.seed}{fold}{rung}"

    @property
    def final(self) -> bool:
        """Whether the decision uses it: a grid job, or one of the last rung of halving."""
        return self.rung is None or self.rung.last

    @property
    def combination(self) -> tuple[str, str, str, str]:
        """(dataset, encoder, decoder, weights): what the recommendation chooses between."""
        return (self.dataset, self.encoder, self.decoder, self.weights)


class Plan(BaseModel):
    """The jobs of a profile, in a stable order, and the profile's own hash."""

    profile_name: str
    profile_hash: str
    jobs: list[Job]

    def find(self, prefix: str) -> list[Job]:
        """The jobs whose hash starts with ``prefix``."""
        return [j for j in self.jobs if j.hash.startswith(prefix)]


def content_hash(data: Any, length: int = 12) -> str:
    """sha256 of canonical JSON (sorted keys), shortened: the same content, the same name."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def spec_with_absolute_root(spec: DatasetSpec) -> DatasetSpec:
    """The spec with its root made absolute, so a job is self-contained on this machine."""
    return spec.model_copy(update={"root": str(spec.root_path())})


# Where a job trains, not what it trains: kept in the job, left out of its hash, so a run started
# on a laptop resumes on a GPU node without retraining what finished.
WHERE_FIELDS = ("accelerator", "strategy")
# What a job trains, but hashed only when not at the default, so that runs from before these
# fields existed keep their hashes (one device on one node is what every earlier run used).
HASHED_WHEN_SET = {"devices": 1, "num_nodes": 1}
# Profile-level, not job-level: the seed list makes the jobs; data-loader workers change nothing.
NOT_OF_A_JOB = ("seeds", "num_workers")


def training_identity(training: Training | dict[str, Any]) -> dict[str, Any]:
    """The training block as it enters a hash: no where-fields, no unset device counts."""
    data = training.model_dump(mode="json") if isinstance(training, Training) else training
    return {
        k: v
        for k, v in data.items()
        if k not in WHERE_FIELDS
        and k not in NOT_OF_A_JOB
        and not (k in HASHED_WHEN_SET and v == HASHED_WHEN_SET[k])
    }


def job_identity(job: Job) -> dict[str, Any]:
    """What decides a job's result, as hashed: the spec's content without its root, the data's
    digest, model, weights, protocol, seed, classes and fold; never where the data is mounted.
    A holdout job has no fold key, so its hash is what it was before folds existed."""
    identity = {
        "spec": job.spec.model_dump(mode="json", exclude={"root"}),
        "data": job.data_digest,
        "encoder": job.encoder,
        "decoder": job.decoder,
        "weights": job.weights,
        "weights_url": job.weights_url,
        "seed": job.seed,
        "training": training_identity(job.training),
        "classes": job.classes,
    }
    if job.fold is not None:
        identity["fold"] = job.fold.model_dump(exclude={"repeats"})
    return identity


def rung_jobs(
    plan: Plan, evaluation: Evaluation, index: int, keep: set[tuple[str, str, str, str]]
) -> list[Job]:
    """Rung ``index`` of successive halving: the plan's (full-budget) jobs of the combinations in
    ``keep``, each cut to the rung's epoch budget and hashed anew (the last rung's are the
    plan's own jobs, same hashes)."""
    out = []
    for job in plan.jobs:
        if job.combination not in keep:
            continue
        epochs = evaluation.rung_epochs(job.training.max_epochs)
        rung = Rung(index=index, rungs=evaluation.rungs, epochs=epochs[index])
        training = job.training.model_copy(update={"max_epochs": epochs[index]})
        cut = job.model_copy(update={"training": training, "rung": rung})
        out.append(cut.model_copy(update={"hash": content_hash(job_identity(cut))}))
    return out


def plan_folds(evaluation: Evaluation) -> list[CvFold | None]:
    """The folds every combination trains: ``[None]`` (one job) under the holdout protocol."""
    if evaluation.protocol == "holdout":
        return [None]
    e = evaluation
    return [
        CvFold(folds=e.folds, index=i, repeat=r, repeats=e.repeats, seed=e.seed, test=e.test)
        for r in range(e.repeats)
        for i in range(e.folds)
    ]


def check_model_grid(model: ModelGrid) -> None:
    """What building the models would refuse, refused before any data is read: an unknown
    encoder or decoder, an unknown weights name or a missing weights file (one line each)."""
    for encoder in model.encoders:
        normalise_encoder(encoder)
    for decoder in model.decoders:
        normalise_decoder(decoder)
    resolve_weights(model.weights, model.weights_url)


def compile_plan(
    profile: Profile, specs: list[DatasetSpec] | None = None, digest_cache: Path | None = None
) -> Plan:
    """Profile -> plan; the order is datasets, then encoders, decoders, seeds as written, then
    folds (repeat by repeat).

    Each dataset's files are digested once (content hashes cached in ``digest_cache``, default
    the matseg cache folder), so the hashes follow the data, not its mount point.
    """
    check_model_grid(profile.model)
    specs = specs if specs is not None else resolve_datasets(profile)
    t = profile.training
    training = t.model_copy(update={"precision": resolve_precision(t.precision, t.accelerator)})
    jobs = []
    for spec in specs:
        absolute = spec_with_absolute_root(spec)
        digest = data_digest(spec, digest_cache)
        for encoder, decoder, seed, fold in product(
            profile.model.encoders,
            profile.model.decoders,
            profile.training.seeds,
            plan_folds(profile.evaluation),
        ):
            job = Job(
                hash="",
                dataset=spec.name,
                encoder=encoder,
                decoder=normalise_decoder(decoder),
                weights=profile.model.weights,
                weights_url=profile.model.weights_url,
                seed=seed,
                spec=absolute,
                data_digest=digest,
                training=training.model_copy(update={"seeds": [seed]}),
                classes=profile.task.classes,
                fold=fold,
            )
            jobs.append(job.model_copy(update={"hash": content_hash(job_identity(job))}))
    profile_hash = run_hash(profile.model_dump(mode="json"), [j.hash for j in jobs])
    return Plan(profile_name=profile.name, profile_hash=profile_hash, jobs=jobs)


# What names a run folder besides its jobs (whose hashes hold what they train, folds and epoch
# budgets included): the settings of the stages whose outputs the folder keeps (quality control,
# explanations). Each is hashed without its defaults, so a field that a later matseg adds (at the
# default that keeps the old behaviour) leaves every folder's name as it was. The task and the
# decision settings (tie margins, target, recommend_by) are not in it: changing them re-decides
# in the same folder from the jobs already trained.
RUN_SETTINGS = {"qc": QualityControl, "explain": Explain}


def run_hash(profile: dict[str, Any], job_hashes: Sequence[str]) -> str:
    """The run's identity from a profile's plain data (the profile of this run, or the copy in
    a run folder) and its jobs' hashes; description and dataset paths do not enter it."""
    settings = {
        block: model.model_validate(profile.get(block) or {}).model_dump(
            mode="json", exclude_defaults=True
        )
        for block, model in RUN_SETTINGS.items()
    }
    return content_hash({"jobs": sorted(job_hashes), **settings})
