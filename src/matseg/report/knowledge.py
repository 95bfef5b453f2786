"""Before training: suggest the combinations to try for a new profile from earlier results.

The knowledge base is a list of *contexts* (an imaging modality, a material class, a task
difficulty, a dataset fingerprint) with the IoU every evaluated combination reached there. It
ships with matseg (``knowledge_base.json``: each entry names its source) and grows with the
user's own run folders (their ``record.json``). A new profile's datasets are matched to the
contexts by a similarity that weighs modality most, then material class, difficulty and the
fingerprint; each combination's score is its IoU relative to the best in a context, averaged
over contexts weighted by similarity. The suggestion says which contexts it drew on and why.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from matseg.errors import SpecError
from matseg.record import EvaluationRecord, read_record
from matseg.rundir import RunDir

DIFFICULTY = {"Easy": 0, "Moderate": 1, "Hard": 2, "Very Hard": 3}
# Similarity weights: the paper's finding is that modality (imaging physics) matters most.
WEIGHTS = {"modality": 0.45, "material": 0.25, "difficulty": 0.15, "fingerprint": 0.15}

# Material classes by keyword: enough to tell a metal from a rock from a polymer.
MATERIAL_CLASSES = {
    "metal": ("alloy", "steel", "superalloy", "metal", "titanium", "aluminium", "aluminum",
              "nickel", "copper", "powder", "l-pbf", "weld", "grain"),
    "ceramic/mineral": ("shale", "rock", "cement", "concrete", "ceramic", "oxide", "mineral",
                        "sandstone", "carbonate", "clay"),
    "polymer/soft": ("polymer", "crystal", "film", "organic", "fibre", "fiber", "biological"),
    "semiconductor": ("silicon", "semiconductor", "wafer", "perovskite", "solar"),
    "composite": ("composite",),
}  # fmt: skip


def material_class(material: str) -> str:
    """The coarse class of a free-text material description ('' when unknown)."""
    text = material.lower()
    for name, words in MATERIAL_CLASSES.items():
        if any(w in text for w in words):
            return name
    return ""


class CombinationResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    encoder: str
    decoder: str
    weights: str = ""
    iou: float


class KnowledgeContext(BaseModel):
    """One earlier context and what each combination reached there."""

    model_config = ConfigDict(extra="forbid")
    name: str
    modality: str
    material: str = ""
    difficulty: str | None = None
    objective: str = ""
    n_classes: int | None = None
    foreground_fraction: float | None = None
    metric: str = Field(description="what 'iou' is, e.g. 'test macro IoU'")
    source: str = Field(description="where the numbers come from")
    results: list[CombinationResult] = Field(min_length=1)


@dataclass
class Match:
    context: str
    source: str
    similarity: float
    why: list[str]


@dataclass
class SuggestedCombination:
    encoder: str
    decoder: str
    score: float  # similarity-weighted mean of IoU / best IoU in each context
    contexts: int


@dataclass
class Suggestion:
    dataset: str
    modality: str
    material: str
    difficulty: str | None
    combinations: list[SuggestedCombination]
    drew_on: list[Match]
    note: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def shipped_contexts() -> list[KnowledgeContext]:
    """The knowledge base that ships with matseg."""
    text = resources.files("matseg.report").joinpath("knowledge_base.json").read_text("utf-8")
    return [KnowledgeContext.model_validate(c) for c in json.loads(text)["contexts"]]


def contexts_from_record(record: EvaluationRecord, split: str = "test") -> list[KnowledgeContext]:
    """A run's datasets as knowledge contexts (test macro IoU, seeds averaged)."""
    out = []
    for d in record.datasets:
        by_combo: dict[tuple[str, str, str], list[float]] = {}
        for j in record.jobs:
            ev = j.evaluations.get(split)
            if j.dataset == d.name and ev is not None and ev.macro_iou is not None:
                by_combo.setdefault((j.encoder, j.decoder, j.weights), []).append(ev.macro_iou)
        if not by_combo:
            continue
        freqs = (d.fingerprint or {}).get("class_frequencies") or {}
        background = freqs.get(d.classes[0]) if d.classes else None
        out.append(
            KnowledgeContext(
                name=f"{record.run.name}/{d.name}",
                modality=d.modality,
                material=d.material,
                difficulty=d.difficulty,
                objective=d.objective,
                n_classes=len(d.classes),
                foreground_fraction=None if background is None else 1 - background,
                metric=f"{split} macro IoU",
                source=f"run {record.run.name} (profile {record.provenance.profile_hash[:8]})",
                results=[
                    CombinationResult(encoder=e, decoder=dec, weights=w, iou=sum(v) / len(v))
                    for (e, dec, w), v in by_combo.items()
                ],
            )
        )
    return out


def load_knowledge(runs: list[Path]) -> list[KnowledgeContext]:
    """The shipped contexts plus those of the given run folders (or record files)."""
    contexts = shipped_contexts()
    for run in runs:
        path = Path(run)
        if path.is_dir() and not RunDir(path).record_file.is_file():
            raise SpecError(str(path), "a run folder with record.json", "none",
                            "run `matseg report RUN` first")  # fmt: skip
        contexts += contexts_from_record(read_record(path))
    return contexts


def similarity(
    modality: str,
    material: str,
    difficulty: str | None,
    n_classes: int | None,
    foreground: float | None,
    ctx: KnowledgeContext,
) -> tuple[float, list[str]]:
    """How close a context is to the new one (0..1), and the reasons in words."""
    score, why = 0.0, []
    if modality.lower() == ctx.modality.lower():
        score += WEIGHTS["modality"]
        why.append(f"same modality ({ctx.modality})")
    mine, theirs = material_class(material), material_class(ctx.material)
    if mine and mine == theirs:
        score += WEIGHTS["material"]
        why.append(f"same material class ({mine})")
    if difficulty in DIFFICULTY and ctx.difficulty in DIFFICULTY:
        gap = abs(DIFFICULTY[difficulty] - DIFFICULTY[ctx.difficulty])  # type: ignore[index]
        score += WEIGHTS["difficulty"] * (1 - gap / 3)
        why.append(f"difficulty {ctx.difficulty} vs {difficulty}")
    parts = []
    if n_classes is not None and ctx.n_classes is not None:
        parts.append(1.0 if n_classes == ctx.n_classes else 0.0)
    if foreground is not None and ctx.foreground_fraction is not None:
        parts.append(1 - min(1.0, abs(foreground - ctx.foreground_fraction) / 0.5))
    if parts:
        score += WEIGHTS["fingerprint"] * sum(parts) / len(parts)
        why.append("fingerprint " + ("close" if sum(parts) / len(parts) > 0.5 else "different"))
    return score, why


def suggest(
    dataset: str,
    modality: str,
    material: str,
    difficulty: str | None,
    contexts: list[KnowledgeContext],
    n_classes: int | None = None,
    foreground: float | None = None,
    top_contexts: int = 3,
) -> Suggestion:
    """Rank combinations for a new context from the most similar earlier contexts."""
    scored = [(similarity(modality, material, difficulty, n_classes, foreground, c), c)
              for c in contexts]  # fmt: skip
    scored.sort(key=lambda t: -t[0][0])
    chosen = [(s, why, c) for (s, why), c in scored[:top_contexts] if s > 0]
    note = ""
    if not chosen:
        chosen = [(s, why, c) for (s, why), c in scored[:top_contexts]]
        note = "no earlier context resembles this one: the suggestion is the overall ranking"
    weighted: dict[tuple[str, str], float] = {}
    weight: dict[tuple[str, str], float] = {}
    count: dict[tuple[str, str], int] = {}
    for s, _, ctx in chosen:
        best = max(r.iou for r in ctx.results)
        w = max(s, 1e-3)  # with no similar context, every context counts (equally)
        for r in ctx.results:
            key = (r.encoder, r.decoder)
            weighted[key] = weighted.get(key, 0.0) + w * (r.iou / best if best > 0 else 0.0)
            weight[key] = weight.get(key, 0.0) + w
            count[key] = count.get(key, 0) + 1
    combos = [
        SuggestedCombination(enc, dec, weighted[(enc, dec)] / weight[(enc, dec)], count[(enc, dec)])
        for enc, dec in weighted
    ]
    combos.sort(key=lambda c: (-c.score, -c.contexts))
    return Suggestion(
        dataset, modality, material, difficulty, combos,
        [Match(c.name, c.source, round(s, 3), why) for s, why, c in chosen], note,
    )  # fmt: skip


def suggest_for_profile(profile_path: Path, runs: list[Path]) -> list[Suggestion]:
    """One suggestion per dataset of a profile (no data is read: the spec's context is used)."""
    from matseg.profile import load_profile, resolve_datasets

    profile = load_profile(profile_path)
    specs = resolve_datasets(profile)
    contexts = load_knowledge(runs)
    difficulty = profile.task.difficulty
    out = []
    for spec in specs:
        classes = profile.task.classes or spec.classes
        out.append(
            suggest(
                spec.name, str(spec.modality), spec.material,
                str(difficulty) if difficulty else None, contexts,
                n_classes=len(classes) if classes else None,
            )
        )  # fmt: skip
    return out
