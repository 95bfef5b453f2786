"""The architecture recommendation, from a record alone: within a dataset, across contexts, and
what to revise when quality control says "not ready".

Within a dataset the decision is the record's (:mod:`matseg.decision`: out-of-fold or validation
per-image IoU, every pair tested with Holm's correction, equivalence within the tie margin,
trivial baselines in the test, ranking stability); this module words it for the report, adds
the protocol in one sentence, the test estimate of the chosen combination (scored once, after
the choice) and the selection gap between the two. The test split decides nothing here.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from matseg.decision import DatasetDecision, Evidence
from matseg.record import EnsembleRecord, EvaluationRecord, SplitEvaluation
from matseg.results import EVIDENCE_WORDS, OOF, QuantityValues, SelectionGap


@dataclass
class Candidate:
    """One combination on one dataset, seeds, repeats and folds pooled (the decision's
    :class:`~matseg.decision.Evidence`), with its test estimate (not used for any choice)."""

    evidence: Evidence
    test_iou: float | None = None
    test_ci: tuple[float | None, float | None] = (None, None)
    # the microstructure quantities of truth and prediction on the test images
    test_quantities: dict[str, QuantityValues] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.evidence.name

    @property
    def encoder(self) -> str:
        return self.evidence.encoder

    @property
    def decoder(self) -> str:
        return self.evidence.decoder

    @property
    def weights(self) -> str:
        return self.evidence.weights

    @property
    def iou(self) -> float:
        """Mean per-image macro IoU on the evidence images (what ranks and is tested)."""
        return self.evidence.mean_iou

    @property
    def parameters(self) -> int:
        return self.evidence.parameters

    @property
    def converged(self) -> bool:
        return self.evidence.converged


@dataclass
class DatasetRecommendation:
    dataset: str
    modality: str
    difficulty: str | None
    decision: DatasetDecision
    ranking: list[Candidate]
    recommended: Candidate | None
    protocol: str  # the protocol in one sentence
    test_estimate: str | None  # the chosen combination's test IoU, in words
    selection_gap: float | None  # evidence estimate minus test estimate of the chosen one
    ensemble_note: str | None  # does the fold ensemble beat a single fold model on test?
    test_vs_oof: SelectionGap | None = None  # fold models alone: test minus out-of-fold, CI

    @property
    def verdict(self) -> str:
        return self.decision.verdict

    @property
    def reasons(self) -> list[str]:
        return self.decision.reasons

    @property
    def tied_with_best(self) -> list[str]:
        return self.decision.tied

    @property
    def use(self) -> str:
        """What to use, in words: the recommended combination, or why there is none."""
        return (
            self.recommended.name if self.recommended else "none (no combination beats a constant)"
        )


@dataclass
class ContextStability:
    """Does the ranking carry over between datasets? (the paper's "context" claim, checked)."""

    kendall: list[dict[str, Any]]
    mean_tau: float | None
    best_iou: dict[str, float]
    spread: float | None
    decoder_wins_by_modality: dict[str, dict[str, int]]
    decoder_wins_by_difficulty: dict[str, dict[str, int]]
    summary: str


@dataclass
class Feedback:
    """What to revise when quality control finds the model not ready for a shift."""

    dataset: str
    job: str
    ready: bool
    failing: dict[str, float | None]
    advice: list[str]


@dataclass
class Recommendation:
    datasets: list[DatasetRecommendation]
    contexts: ContextStability
    feedback: list[Feedback] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- within a dataset ---------------------------------------------------------------------------


def _test_of(
    record: EvaluationRecord, d: DatasetDecision, e: Evidence
) -> tuple[SplitEvaluation | None, EnsembleRecord | None]:
    """The combination's test evaluation: its fold ensemble's (cv), else its best-validation
    job's (holdout)."""
    for ens in record.ensembles:
        if ens.dataset == d.dataset and (ens.encoder, ens.decoder, ens.weights) == (
            e.encoder, e.decoder, e.weights
        ):  # fmt: skip
            return ens.evaluations.get("test"), ens
    jobs = [j for j in record.jobs if j.hash in e.jobs and "test" in j.evaluations]
    if not jobs:
        return None, None
    best = max(jobs, key=lambda j: -1.0 if j.best_val_iou is None else j.best_val_iou)
    return best.evaluations["test"], None


def _protocol(d: DatasetDecision, n_test: int | None) -> str:
    n = len(d.images)
    margin = (
        f"equivalence within +-{d.tie_margin} IoU" if d.ranked_by == "iou"
        else f"ranked by the {d.ranked_by} absolute error, equivalence within "
        f"+-{d.tie_margin:.3g}" + ("" if d.target_unit in (None, "1") else f" {d.target_unit}")
    )  # fmt: skip
    tests = f"paired Wilcoxon tests with Holm's correction over the grid, {margin}"
    if d.evidence == OOF:
        repeats = f", repeated {d.repeats} times," if d.repeats and d.repeats > 1 else ""
        dev = "train + val" + ("" if d.test_kept else " + test")
        test = (
            f"the test split ({n_test} images) decided nothing and is scored once, by each "
            "combination's fold ensemble"
            if d.test_kept and n_test
            else "no untouched test split remains (evaluation.test = none)"
            if not d.test_kept
            else "the dataset has no test split"
        )
        return (
            f"{d.folds}-fold cross-validation{repeats} of the {n} development images ({dev}): "
            "each is predicted by the fold model that never saw it, and combinations are "
            f"compared on these out-of-fold per-image IoUs ({tests}); {test}."
        )
    if d.evidence == "val":
        return (
            f"holdout: one model per combination and seed, trained on train, stopped early and "
            f"compared on the {n} validation images ({tests}); the test split decided nothing."
        )
    return (
        f"compared on the {n} test images ({tests}), as matseg before 0.3 did: the choice and "
        "the estimate come from the same images, so the estimate is optimistic."
    )


def _ensemble_note(ens: EnsembleRecord | None) -> str | None:
    """Whether the fold ensemble beats its members alone on the test images (paired)."""
    if ens is None or "test" not in ens.evaluations:
        return None
    ev = ens.evaluations["test"]
    alone = [v for v in ens.members_macro_iou.get("test", {}).values() if v is not None]
    per_member = ens.members_per_image.get("test", [])
    pairs = [
        (img.macro_iou, m)
        for img, m in zip(ev.images, per_member, strict=False)
        if img.macro_iou is not None and m is not None
    ]
    if not alone or ev.macro_iou is None:
        return None
    text = (
        f"the fold ensemble ({len(ens.members)} models) scores test macro IoU "
        f"{ev.macro_iou:.3f}; its fold models alone {np.mean(alone):.3f} on average "
        f"(range {min(alone):.3f}-{max(alone):.3f})"
    )
    diff = np.array([a - b for a, b in pairs])
    if len(diff) >= 6 and np.any(diff != 0):
        p = float(stats.wilcoxon(diff).pvalue)
        verdict = "beats" if p < 0.05 and diff.mean() > 0 else (
            "is worse than" if p < 0.05 else "is not significantly different from"
        )  # fmt: skip
        text += f": the ensemble {verdict} a single fold model (paired Wilcoxon p = {p:.3f})"
    else:
        text += f"; too few test images ({len(diff)}) to test the difference"
    return text


def _gap_words(g: SelectionGap) -> str:
    """Single fold models on test against their own out-of-fold figure, in words."""
    if g.difference is None or g.members_test is None or g.out_of_fold is None:
        return "the test and out-of-fold figures cannot be compared (an undefined IoU)"
    lo, hi = g.ci
    ci = f" [{lo:+.3f}, {hi:+.3f}]" if lo is not None and hi is not None else ""
    text = (
        f"the fold models alone score {g.members_test:.3f} on the {g.test_images} test images, "
        f"{g.difference:+.3f}{ci} from their {g.out_of_fold:.3f} on the "
        f"{g.out_of_fold_images} out-of-fold images"
    )
    if g.consistent is None:
        return text
    if g.consistent:
        return text + ": image sampling explains the difference"
    easier = "easier" if g.difference > 0 else "harder"
    return (
        text + f": more than image sampling explains, so the test images are {easier} for these "
        "models than the development images; the out-of-fold figure is the estimate for images "
        "like the development set, the test figure for images like the test split"
    )


def recommend_dataset(record: EvaluationRecord, d: DatasetDecision) -> DatasetRecommendation:
    """The record's decision on one dataset, with the protocol, test estimate and gap."""
    context = next((c for c in record.datasets if c.name == d.dataset), None)
    ranking = []
    chosen_ensemble = None
    for e in d.ranking:
        ev, ens = _test_of(record, d, e)
        ci = tuple((ev.ci.get("macro_iou") or [None, None])[:2]) if ev else (None, None)
        ranking.append(Candidate(e, ev.macro_iou if ev else None, ci,  # type: ignore[arg-type]
                                 ev.quantities if ev else {}))  # fmt: skip
        if e.name == d.recommended:
            chosen_ensemble = ens
    pick = next((c for c in ranking if c.name == d.recommended), None)
    n_test = context.splits.get("test") if context else None
    estimate, gap = None, None
    if pick is not None and pick.test_iou is not None and d.evidence != "test":
        lo, hi = pick.evidence.macro_iou_ci
        oof = pick.evidence.macro_iou
        where = EVIDENCE_WORDS[d.evidence]
        inside = (
            "inside" if lo is not None and hi is not None and lo <= pick.test_iou <= hi
            else "outside"
        )  # fmt: skip
        tlo, thi = pick.test_ci
        test_ci = f" [{tlo:.3f}, {thi:.3f}]" if tlo is not None and thi is not None else ""
        estimate = (
            f"test macro IoU of {pick.name}: {pick.test_iou:.3f}{test_ci} (the honest "
            f"estimate, scored once after the choice); {where} {oof:.3f} "
            + (f"[{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "")
            + f": the test figure lies {inside} the {where} 95% CI"
        )
        gap = None if oof is None else float(oof - pick.test_iou)
        if chosen_ensemble is not None and chosen_ensemble.selection_gap is not None:
            estimate += "; " + _gap_words(chosen_ensemble.selection_gap)
    return DatasetRecommendation(
        dataset=d.dataset,
        modality=context.modality if context else "other",
        difficulty=context.difficulty if context else None,
        decision=d,
        ranking=ranking,
        recommended=pick,
        protocol=_protocol(d, n_test),
        test_estimate=estimate,
        selection_gap=gap,
        ensemble_note=_ensemble_note(chosen_ensemble),
        test_vs_oof=chosen_ensemble.selection_gap if chosen_ensemble else None,
    )


# --- across contexts ----------------------------------------------------------------------------


def context_stability(
    record: EvaluationRecord, per_dataset: list[DatasetRecommendation]
) -> ContextStability:
    """Kendall tau between datasets' rankings, spread of the best IoU, decoder wins by context."""
    kendall = []
    for i, a in enumerate(per_dataset):
        for b in per_dataset[i + 1 :]:
            ia = {(c.encoder, c.decoder, c.weights): c.iou for c in a.ranking}
            ib = {(c.encoder, c.decoder, c.weights): c.iou for c in b.ranking}
            common = sorted(set(ia) & set(ib))
            if len(common) < 2:
                continue
            res = stats.kendalltau([ia[k] for k in common], [ib[k] for k in common])
            tau = None if math.isnan(res.statistic) else float(res.statistic)
            p = None if math.isnan(res.pvalue) else float(res.pvalue)
            kendall.append({"a": a.dataset, "b": b.dataset, "tau": tau, "p": p,
                            "combinations": len(common)})  # fmt: skip
    taus = [k["tau"] for k in kendall if k["tau"] is not None]
    best = {d.dataset: d.ranking[0].iou for d in per_dataset}
    spread = max(best.values()) - min(best.values()) if len(best) > 1 else None
    by_modality: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    by_difficulty: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for d in per_dataset:
        by_modality[d.modality][d.ranking[0].decoder] += 1
        by_difficulty[d.difficulty or "unstated"][d.ranking[0].decoder] += 1
    mean_tau = float(np.mean(taus)) if taus else None
    few = bool(kendall) and max(k["combinations"] for k in kendall) < 3
    if mean_tau is None:
        summary = "one dataset (or no shared combinations): ranking stability cannot be judged"
    elif few:
        flips = sum(1 for t in taus if t < 0)
        summary = (
            f"only two shared combinations per pair of datasets, so rankings can only agree or "
            f"flip (tau = +-1): the order flips in {flips} of {len(taus)} pairs; evaluate three "
            "or more combinations to measure ranking stability"
        )
    elif mean_tau > 0.7:
        summary = f"rankings agree across datasets (mean Kendall tau {mean_tau:.2f})"
    else:
        summary = (
            f"rankings change between datasets (mean Kendall tau {mean_tau:.2f}): the context "
            "determines the best architecture, so choose per context"
        )
    return ContextStability(
        kendall, mean_tau, best, spread,
        {k: dict(v) for k, v in by_modality.items()},
        {k: dict(v) for k, v in by_difficulty.items()},
        summary,
    )  # fmt: skip


# --- the feedback loop --------------------------------------------------------------------------

_SHIFT_ADVICE = {
    "blur": "defocus or lower resolution: add blurred augmentations or re-image in focus",
    "noise": "noisier acquisition: denoise before segmentation or train with noise augmentation",
    "contrast": "contrast changes: normalise intensities per image (percentile stretch)",
    "gamma": "brightness response changes: normalise intensities or add gamma augmentation",
    "resolution": "another magnification: resample to the training pixel size",
    "drift": "illumination drift: flat-field correct or subtract the background",
}


def feedback(record: EvaluationRecord, per_dataset: list[DatasetRecommendation]) -> list[Feedback]:
    """For each quality-controlled job: ready, or which shift failed and what to revise."""
    alternatives = {d.dataset: [c.name for c in d.ranking[1:3]] for d in per_dataset}
    out = []
    for q in record.quality:
        advice = []
        if not q.ready:
            if not q.failing and "no shift scenario" in q.reason:
                advice.append("declare shift scenarios (qc.scenarios) so readiness can be judged")
            for scenario, auroc in q.failing.items():
                text = f"AUROC {auroc:.3f}" if auroc is not None else "AUROC undefined"
                advice.append(
                    f"'{scenario}' is not reliably detected ({text} < {q.ready_auroc}): collect "
                    "and label images from this condition and add them to training, or screen "
                    "them out before segmentation"
                )
                for key, tip in _SHIFT_ADVICE.items():
                    if key in scenario:
                        advice.append(tip)
            alts = alternatives.get(q.dataset) or []
            if alts and q.failing:
                advice.append(
                    "try another architecture whose features separate the shift better: "
                    + ", ".join(alts)
                )
        out.append(Feedback(q.dataset, q.job, q.ready, dict(q.failing), advice))
    return out


def recommend(record: EvaluationRecord) -> Recommendation:
    """The whole recommendation of a run (from the record's decisions; none in records written
    before matseg 0.3: rebuild the record with ``matseg report RUN``)."""
    per_dataset = [recommend_dataset(record, d) for d in record.decisions]
    return Recommendation(per_dataset, context_stability(record, per_dataset),
                          feedback(record, per_dataset))  # fmt: skip
