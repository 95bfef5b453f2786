"""The architecture recommendation, from a record alone: within a dataset, across contexts, and
what to revise when quality control says "not ready".

Within a dataset, combinations (encoder + decoder + weights) are ranked by their test macro IoU
(mean over seeds). The best is called better than the runner-up only when a paired comparison
over the same test images says so: the paired bootstrap 95% interval of the mean per-image IoU
difference excludes 0 AND the Wilcoxon signed-rank test gives p < 0.05. Otherwise it is a tie,
and among the combinations tied with the best the cheapest (fewest parameters, then lowest
latency) is recommended; with so few test images that no test could reach p < 0.05 (fewer than
6), the verdict is "inconclusive" and the best by IoU is recommended provisionally. The test
split is used here to report, never to train or select checkpoints (that was done on
validation).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from matseg.record import EvaluationRecord, JobRecord
from matseg.selection import ALPHA


@dataclass
class Candidate:
    """One combination on one dataset, its seeds pooled."""

    encoder: str
    decoder: str
    weights: str
    jobs: list[str]
    iou: float  # mean over seeds of the dataset-level test macro IoU
    per_image: dict[str, float]  # image key -> per-image macro IoU, mean over seeds
    parameters: int
    latency_ms: float | None
    converged: bool = True  # False: a budget stopped one of its jobs while val IoU still rose

    @property
    def name(self) -> str:
        return f"{self.encoder} + {self.decoder}" + (
            f" ({self.weights})" if self.weights not in ("none", "imagenet") else ""
        )


@dataclass
class PairedTest:
    """Best against another combination over the same test images."""

    a: str
    b: str
    n_images: int
    mean_difference: float
    ci: tuple[float, float]
    p_bootstrap: float
    p_wilcoxon: float | None
    significant: bool
    testable: bool  # enough images that the test could reach significance at all
    note: str = ""


@dataclass
class DatasetRecommendation:
    dataset: str
    modality: str
    difficulty: str | None
    ranking: list[Candidate]
    test: PairedTest | None
    verdict: str  # "better", "tie", "inconclusive" (too few test images) or "only one combination"
    recommended: Candidate
    tied_with_best: list[str]
    reasons: list[str]


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


def candidates(record: EvaluationRecord, dataset: str, split: str = "test") -> list[Candidate]:
    """The dataset's combinations, seeds pooled, best first."""
    groups: dict[tuple[str, str, str], list[JobRecord]] = defaultdict(list)
    for job in record.jobs:
        ev = job.evaluations.get(split)
        if job.dataset == dataset and ev is not None and ev.macro_iou is not None:
            groups[(job.encoder, job.decoder, job.weights)].append(job)
    out = []
    for (encoder, decoder, weights), jobs in groups.items():
        per_image: dict[str, list[float]] = defaultdict(list)
        for job in jobs:
            for img in job.evaluations[split].images:
                if img.macro_iou is not None:
                    per_image[img.key].append(img.macro_iou)
        latencies = [j.latency_ms_256 for j in jobs if j.latency_ms_256 is not None]
        out.append(
            Candidate(
                encoder=encoder,
                decoder=decoder,
                weights=weights,
                jobs=[j.hash for j in jobs],
                iou=float(np.mean([j.evaluations[split].macro_iou for j in jobs])),
                per_image={k: float(np.mean(v)) for k, v in per_image.items()},
                parameters=jobs[0].parameters,
                latency_ms=float(np.median(latencies)) if latencies else None,
                converged=all(j.converged is not False for j in jobs),
            )
        )
    return sorted(out, key=lambda c: (-c.iou, c.parameters))


def paired_test(
    a: Candidate, b: Candidate, n_boot: int = 10_000, seed: int = 0, alpha: float = ALPHA
) -> PairedTest:
    """Paired bootstrap of the mean per-image IoU difference a - b, and Wilcoxon signed-rank."""
    keys = sorted(set(a.per_image) & set(b.per_image))
    diff = np.array([a.per_image[k] - b.per_image[k] for k in keys])
    n = len(diff)
    if n == 0:
        return PairedTest(a.name, b.name, 0, math.nan, (math.nan, math.nan), 1.0, None, False,
                          False, "no test image in common")  # fmt: skip
    rng = np.random.default_rng(seed)
    boot = diff[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    lo, hi = np.percentile(boot, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    p_boot = float(min(1.0, 2 * min((boot <= 0).mean(), (boot >= 0).mean())))
    p_wil: float | None = None
    note = ""
    if np.any(diff != 0):
        p_wil = float(stats.wilcoxon(diff, zero_method="wilcox").pvalue)
    smallest = 2.0 / 2**n  # the smallest two-sided p an exact signed-rank test can give
    testable = smallest < alpha
    if not testable:
        note = (
            f"with {n} test images no paired test can reach p < {alpha} (smallest possible "
            f"Wilcoxon p = {smallest:.3f}): more test images are needed to separate them"
        )
    significant = bool((lo > 0 or hi < 0) and p_wil is not None and p_wil < alpha)
    return PairedTest(a.name, b.name, n, float(diff.mean()), (float(lo), float(hi)), p_boot,
                      p_wil, significant, testable, note)  # fmt: skip


def _cost(c: Candidate) -> tuple[int, float]:
    return (c.parameters, c.latency_ms if c.latency_ms is not None else math.inf)


def recommend_dataset(
    record: EvaluationRecord, dataset: str, split: str = "test", seed: int = 0
) -> DatasetRecommendation | None:
    """Best combination on one dataset, whether it really beats the runner-up, and the pick."""
    ranking = candidates(record, dataset, split)
    if not ranking:
        return None
    context = next((d for d in record.datasets if d.name == dataset), None)
    modality = context.modality if context else "other"
    difficulty = context.difficulty if context else None
    best = ranking[0]
    if len(ranking) == 1:
        return DatasetRecommendation(dataset, modality, difficulty, ranking, None,
                                     "only one combination", best, [best.name],
                                     [f"only {best.name} was evaluated"])  # fmt: skip
    test = paired_test(best, ranking[1], seed=seed)
    tied = [best] + [c for c in ranking[1:] if not paired_test(best, c, seed=seed).significant]
    reasons = [
        f"{best.name} has the highest {split} macro IoU ({best.iou:.3f}); the runner-up "
        f"{ranking[1].name} has {ranking[1].iou:.3f} (mean per-image difference "
        f"{test.mean_difference:+.3f}, paired bootstrap 95% CI [{test.ci[0]:+.3f}, "
        f"{test.ci[1]:+.3f}], Wilcoxon p = "
        + ("n/a" if test.p_wilcoxon is None else f"{test.p_wilcoxon:.3f}")
        + f", {test.n_images} images)"
    ]
    if test.note:
        reasons.append(test.note)
    unsettled = [c.name for c in (best, ranking[1]) if not c.converged]
    if unsettled:
        # A model stopped while still improving is not that architecture's result: ranking
        # it either way would compare budgets, not architectures.
        verdict, pick = "inconclusive", best
        reasons.append(
            f"inconclusive: {' and '.join(unsettled)} "
            + ("was" if len(unsettled) == 1 else "were")
            + " stopped by the training budget while validation IoU was still rising (not "
            f"converged); {best.name} is recommended "
            "provisionally; train longer (more max_epochs) for a verdict"
        )
    elif test.significant:
        verdict, pick = "better", best
        reasons.append(f"the difference is significant: {best.name} is recommended")
    elif not test.testable:
        # Too few images to test: calling it a tie would claim an equivalence nobody showed,
        # and the cheaper model may be clearly worse. Recommend the best, provisionally.
        verdict, pick = "inconclusive", best
        reasons.append(
            f"inconclusive: {best.name} is recommended provisionally, on its IoU alone; label "
            "more test images to confirm it"
        )
    else:
        verdict = "tie"
        pick = min(tied, key=_cost)
        names = ", ".join(c.name for c in tied)
        reasons.append(
            f"not significantly different ({names}): prefer the cheapest, {pick.name} "
            f"({pick.parameters / 1e6:.1f} M parameters"
            + (f", {pick.latency_ms:.0f} ms per 256 px image" if pick.latency_ms else "")
            + ")"
        )
    return DatasetRecommendation(dataset, modality, difficulty, ranking, test, verdict, pick,
                                 [c.name for c in tied], reasons)  # fmt: skip


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


def recommend(record: EvaluationRecord, split: str = "test", seed: int = 0) -> Recommendation:
    """The whole recommendation of a run."""
    per_dataset = [
        r for d in record.datasets if (r := recommend_dataset(record, d.name, split, seed))
    ]
    return Recommendation(per_dataset, context_stability(record, per_dataset),
                          feedback(record, per_dataset))  # fmt: skip
