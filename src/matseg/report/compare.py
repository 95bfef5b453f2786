"""What changed between two runs: protocol, provenance, scores, verdicts and recommendations.

Jobs are matched on what they are (dataset, encoder, decoder, weights, seed), not on their hash,
so a changed protocol still lines the same combinations up side by side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from matseg.record import EvaluationRecord
from matseg.report.recommend import recommend


@dataclass
class ScoreChange:
    dataset: str
    combination: str
    seed: int
    split: str
    iou_a: float | None
    iou_b: float | None
    delta: float | None
    intervals_overlap: bool | None  # bootstrap 95% intervals overlap: the change may be noise


@dataclass
class Comparison:
    run_a: str
    run_b: str
    profile_changes: list[tuple[str, Any, Any]] = field(default_factory=list)
    provenance_changes: list[tuple[str, Any, Any]] = field(default_factory=list)
    scores: list[ScoreChange] = field(default_factory=list)
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    verdicts: list[tuple[str, str, str]] = field(default_factory=list)
    recommendations: list[tuple[str, str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


def _diff(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    fa, fb = _flatten(a), _flatten(b)
    return [(k, fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def _overlap(a: list[Any] | None, b: list[Any] | None) -> bool | None:
    if not a or not b or None in a[:2] or None in b[:2]:
        return None
    return bool(a[0] <= b[1] and b[0] <= a[1])


def compare_records(a: EvaluationRecord, b: EvaluationRecord) -> Comparison:
    """Side by side: what differs between run A and run B."""
    out = Comparison(a.run.name, b.run.name)
    out.profile_changes = _diff(a.run.profile, b.run.profile)
    prov_a = a.provenance.model_dump(exclude={"created"})
    prov_b = b.provenance.model_dump(exclude={"created"})
    out.provenance_changes = _diff(prov_a, prov_b)

    def key(j: Any) -> tuple[str, str, str, str, int]:
        return (j.dataset, j.encoder, j.decoder, j.weights, j.seed)

    jobs_a, jobs_b = {key(j): j for j in a.jobs}, {key(j): j for j in b.jobs}
    for k in sorted(set(jobs_a) | set(jobs_b)):
        label = f"{k[0]} / {k[1]} + {k[2]} ({k[3]}) / seed {k[4]}"
        if k not in jobs_b:
            out.only_in_a.append(label)
            continue
        if k not in jobs_a:
            out.only_in_b.append(label)
            continue
        ja, jb = jobs_a[k], jobs_b[k]
        for split in sorted(set(ja.evaluations) | set(jb.evaluations)):
            ea, eb = ja.evaluations.get(split), jb.evaluations.get(split)
            ia = ea.macro_iou if ea else None
            ib = eb.macro_iou if eb else None
            out.scores.append(
                ScoreChange(
                    k[0], f"{k[1]} + {k[2]} ({k[3]})", k[4], split, ia, ib,
                    None if ia is None or ib is None else ib - ia,
                    _overlap(ea.ci.get("macro_iou") if ea else None,
                             eb.ci.get("macro_iou") if eb else None),
                )
            )  # fmt: skip
    qa = {q.dataset: q for q in a.quality}
    qb = {q.dataset: q for q in b.quality}
    for d in sorted(set(qa) | set(qb)):

        def state(q: Any) -> str:
            return "no QC" if q is None else ("ready" if q.ready else f"not ready ({q.reason})")

        if state(qa.get(d)) != state(qb.get(d)):
            out.verdicts.append((d, state(qa.get(d)), state(qb.get(d))))
    ra = {r.dataset: r.use for r in recommend(a).datasets}
    rb = {r.dataset: r.use for r in recommend(b).datasets}
    for d in sorted(set(ra) | set(rb)):
        if ra.get(d) != rb.get(d):
            out.recommendations.append((d, ra.get(d, "–"), rb.get(d, "–")))
    return out
