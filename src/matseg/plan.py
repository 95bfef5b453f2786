"""The plan: a profile compiled, deterministically, into jobs (dataset x encoder x decoder x seed).

Each job carries everything that decides its result (the dataset spec as data with a digest of
its files, the model, the weights, the training protocol, the seed) and a content hash of exactly
that, which names its folder: a finished job is never redone, changing anything that matters
makes a new job, and moving the data (or the run) to another mount point changes nothing.
"""

from __future__ import annotations

import hashlib
import json
from itertools import product
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from matseg.datasets.digest import data_digest
from matseg.datasets.spec import DatasetSpec
from matseg.models import normalise_decoder
from matseg.profile import Profile, Training, resolve_datasets


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
        return f"{self.dataset} / {self.encoder} + {self.decoder} / seed {self.seed}"


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
    digest, model, weights, protocol, seed and classes; never where the data is mounted."""
    return {
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


def compile_plan(
    profile: Profile, specs: list[DatasetSpec] | None = None, digest_cache: Path | None = None
) -> Plan:
    """Profile -> plan; the order is datasets, then encoders, decoders, seeds as written.

    Each dataset's files are digested once (content hashes cached in ``digest_cache``, default
    the matseg cache folder), so the hashes follow the data, not its mount point.
    """
    specs = specs if specs is not None else resolve_datasets(profile)
    jobs = []
    for spec in specs:
        absolute = spec_with_absolute_root(spec)
        digest = data_digest(spec, digest_cache)
        for encoder, decoder, seed in product(
            profile.model.encoders, profile.model.decoders, profile.training.seeds
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
                training=profile.training.model_copy(update={"seeds": [seed]}),
                classes=profile.task.classes,
            )
            jobs.append(job.model_copy(update={"hash": content_hash(job_identity(job))}))
    dumped = profile.model_dump(mode="json")
    profile_hash = content_hash({**dumped, "training": training_identity(dumped["training"])})
    return Plan(profile_name=profile.name, profile_hash=profile_hash, jobs=jobs)
