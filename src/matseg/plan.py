"""The plan: a profile compiled, deterministically, into jobs (dataset x encoder x decoder x seed).

Each job carries everything that decides its result (the dataset spec as data, the model, the
weights, the training protocol, the seed) and a content hash of exactly that, which names its
folder: a finished job is never redone, and changing anything that matters makes a new job.
"""

from __future__ import annotations

import hashlib
import json
from itertools import product
from typing import Any

from pydantic import BaseModel, ConfigDict

from matseg.datasets.spec import DatasetSpec
from matseg.models import normalise_decoder
from matseg.profile import Profile, Training, resolve_datasets


class Job(BaseModel):
    """One trainable unit of a plan."""

    model_config = ConfigDict(frozen=True)

    hash: str
    dataset: str
    encoder: str
    decoder: str
    weights: str
    weights_url: str | None
    seed: int
    spec: dict[str, Any]  # the dataset spec as data, with its root made absolute
    training: dict[str, Any]
    classes: list[str] | None

    def label(self) -> str:
        return f"{self.dataset} / {self.encoder} + {self.decoder} / seed {self.seed}"


class Plan(BaseModel):
    """The jobs of a profile, in a stable order, and the profile's own hash."""

    profile_name: str
    profile_hash: str
    jobs: list[Job]


def content_hash(data: Any, length: int = 12) -> str:
    """sha256 of canonical JSON (sorted keys), shortened: the same content, the same name."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def spec_as_data(spec: DatasetSpec) -> dict[str, Any]:
    """A spec as JSON data with its root absolute, so a job is self-contained."""
    data = spec.model_dump(mode="json")
    data["root"] = str(spec.root_path())
    return data


# Where a job trains, not what it trains: kept in the job, left out of its hash, so a run started
# on a laptop resumes on a GPU node without retraining what finished.
WHERE_FIELDS = ("accelerator", "strategy")
# What a job trains, but hashed only when not at the default, so that runs from before these
# fields existed keep their hashes (one device on one node is what every earlier run used).
HASHED_WHEN_SET = {"devices": 1, "num_nodes": 1}


def training_identity(training: dict[str, Any]) -> dict[str, Any]:
    """The training block as it enters a hash: no where-fields, no unset device counts."""
    return {
        k: v
        for k, v in training.items()
        if k not in WHERE_FIELDS and not (k in HASHED_WHEN_SET and v == HASHED_WHEN_SET[k])
    }


def _training_for_job(training: Training) -> dict[str, Any]:
    data = training.model_dump(mode="json", exclude={"seeds", "num_workers"})
    return data


def compile_plan(profile: Profile, specs: list[DatasetSpec] | None = None) -> Plan:
    """Profile -> plan; the order is datasets, then encoders, decoders, seeds as written."""
    specs = specs if specs is not None else resolve_datasets(profile)
    training = _training_for_job(profile.training)
    jobs = []
    for spec, encoder, decoder, seed in product(
        specs, profile.model.encoders, profile.model.decoders, profile.training.seeds
    ):
        content = {
            "spec": spec_as_data(spec),
            "encoder": encoder,
            "decoder": normalise_decoder(decoder),
            "weights": profile.model.weights,
            "weights_url": profile.model.weights_url,
            "seed": seed,
            "training": training,
            "classes": profile.task.classes,
        }
        what = {**content, "training": training_identity(training)}
        jobs.append(Job(hash=content_hash(what), dataset=spec.name, **content))
    dumped = profile.model_dump(mode="json")
    profile_hash = content_hash({**dumped, "training": training_identity(dumped["training"])})
    return Plan(profile_name=profile.name, profile_hash=profile_hash, jobs=jobs)
