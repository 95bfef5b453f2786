"""The decision of a run: per dataset, which combination to recommend, and how sure that is.

The evidence is per-image macro IoU on images no choice of the job itself looked at:

- cross-validation (``evaluation.protocol = "cv"``): the out-of-fold predictions, every
  development image predicted by the fold model that never saw it (split ``oof``);
- holdout: the validation split (which also chose each job's checkpoint, but not the test);
- run folders written before matseg 0.3 have only the test split: it is used, and said to be
  optimistic (the choice and the estimate come from the same images).

The test split never enters a decision here. Seeds and repeats are pooled per image (their
confusion matrices summed), so every combination has one score per image and the paired tests
of :mod:`matseg.selection` compare them image by image. A combination that does not beat the
better trivial baseline (majority class, or all foreground) on the same images (one-sided
signed-rank, Holm over the grid) is "no better than a constant" and never recommended. Ranking
stability: how often each combination is best per fold and over bootstrap resamples of the
images, and Kendall's tau between the folds' rankings.

Everything is computed from the jobs' ``metrics.json`` (their per-image confusions), so the
record builds it from the run folder without reading data or models.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from matseg import metrics
from matseg.errors import SpecError
from matseg.quantities import Target
from matseg.results import EVIDENCE_WORDS, OOF, JobResult
from matseg.rundir import RunDir
from matseg.selection import ALPHA, TIE_MARGIN, Comparison, compare_to_best, holm, signed_rank

VAL, TEST = "val", "test"
N_BOOT = 2000  # bootstrap resamples for the pooled estimate's CI and the ranking stability


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Versus(_Model):
    """The best against this combination, on the same images (``selection.Comparison``)."""

    n_images: int
    mean_difference: float
    ci: list[float]
    p: float
    p_holm: float
    p_equivalent: float
    p_equivalent_holm: float
    verdict: str  # better | equivalent | undecided
    note: str = ""


class Evidence(_Model):
    """One combination on one dataset: its evidence scores, seeds, repeats and folds pooled."""

    name: str
    encoder: str
    decoder: str
    weights: str
    jobs: list[str]
    mean_iou: float  # mean per-image macro IoU: what the paired tests compare
    macro_iou: float | None  # pooled over the evidence images, with its bootstrap CI
    macro_iou_ci: list[float | None]
    foreground_iou: float | None
    converged: bool
    parameters: int
    latency_ms: float | None
    beats_constant: bool
    constant_difference: float  # mean per-image IoU minus the better constant's
    constant_p_holm: float
    best_in_folds: float | None  # share of folds in which it is best (None: no folds)
    best_in_bootstrap: float  # share of bootstrap resamples of the images in which it is best
    versus_best: Versus | None = None  # None for the best itself
    # the task's target quantity on the evidence images (None without a target)
    target_error: float | None = None  # mean absolute error, per image
    target_error_ci: list[float | None] = []  # its bootstrap 95% CI
    target_bias: float | None = None  # mean signed error (prediction - truth)


class DatasetDecision(_Model):
    """What the evidence says on one dataset: the ranking, the verdict, the pick, the why."""

    dataset: str
    protocol: str  # cv | holdout | test (run folders before 0.3)
    evidence: str  # the split the decision used: oof | val | test
    test_kept: bool  # the spec's test split stayed out of every fold
    folds: int | None
    repeats: int | None
    seeds: list[int]
    tie_margin: float
    alpha: float
    images: list[str]
    ranking: list[Evidence]  # best first (by mean per-image IoU)
    baselines: dict[str, float]  # constant -> mean per-image macro IoU on the same images
    # (IoU even when a target ranked: its constant's error is target_baseline_error)
    per_image: dict[str, list[float]]  # combination -> per-image macro IoU, aligned with images
    kendall_tau_folds: float | None
    verdict: str  # better | tie | inconclusive | only one combination | only one beats a
    # constant | no better than a constant
    recommended: str | None
    tied: list[str]
    reasons: list[str]
    notes: list[str]
    ranked_by: str = "iou"  # iou, or the target ('quantity:class') whose error ranked
    target: str | None = None  # the task's target quantity, 'quantity:class'
    target_unit: str | None = None
    target_baseline_error: float | None = None  # the training-mean constant's mean abs error


@dataclass(frozen=True)
class Ranking:
    """What ranks the combinations: IoU (default), or the absolute error of the task's target
    quantity (``by = "target"``), with its equivalence margin (None: 5% of the mean truth)."""

    target: str | None = None
    by: str = "iou"
    target_tie_margin: float | None = None

    @classmethod
    def of_profile(cls, profile: dict[str, Any]) -> Ranking:
        """From a profile's plain data (the run's copy)."""
        task, evaluation = profile.get("task") or {}, profile.get("evaluation") or {}
        return cls(task.get("target"), evaluation.get("recommend_by", "iou"),
                   evaluation.get("target_tie_margin"))  # fmt: skip


TARGET_MARGIN_SHARE = 0.05  # default equivalence margin of a target: 5% of its mean true value


def combination_name(encoder: str, decoder: str, weights: str) -> str:
    """``encoder + decoder`` (with the weights when they are not the usual ones)."""
    named = f" ({weights})" if weights not in ("none", "imagenet") else ""
    return f"{encoder} + {decoder}{named}"


@dataclass
class _Pooled:
    """One combination's evidence: per image, confusions summed over seeds and repeats."""

    jobs: list[JobResult] = field(default_factory=list)
    confusion: dict[str, np.ndarray] = field(default_factory=dict)
    constants: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    by_fold: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    # target quantity per image: truth, the predictions (seeds, repeats) and the constant's
    truth: dict[str, float] = field(default_factory=dict)
    predicted: dict[str, list[float]] = field(default_factory=dict)
    constant: dict[str, list[float]] = field(default_factory=dict)
    unit: str | None = None

    def add_target(self, result: JobResult, split: str, target: str) -> None:
        values = result.evaluations[split].quantities.get(target)
        if values is None:
            return
        self.unit = values.unit
        train_mean = result.train_quantities.get(target)
        images = result.evaluations[split].images
        for image, t, p in zip(images, values.truth, values.predicted, strict=True):
            self.truth[image.key] = math.nan if t is None else t
            self.predicted.setdefault(image.key, []).append(math.nan if p is None else p)
            self.constant.setdefault(image.key, []).append(
                math.nan if train_mean is None else train_mean
            )

    def add(self, result: JobResult, split: str) -> None:
        self.jobs.append(result)
        ev = result.evaluations[split]
        conf = np.asarray(ev.confusions, dtype=np.int64)
        majority = metrics.majority_class(np.asarray(result.train_class_frequencies or [1.0]))
        counts = conf.sum(axis=2)
        constant = {"majority class": metrics.baseline_confusions(counts, majority)}
        if conf.shape[-1] == 2:
            constant["all foreground"] = metrics.baseline_confusions(counts, 1)
        fold = result.job.fold.name if result.job.fold is not None else None
        for n, image in enumerate(ev.images):
            key = image.key
            self.confusion[key] = self.confusion.get(key, 0) + conf[n]
            for name, c in constant.items():
                pooled = self.constants.setdefault(name, {})
                pooled[key] = pooled.get(key, 0) + c[n]
            if fold is not None:
                per = self.by_fold.setdefault(fold, {})
                per[key] = per.get(key, 0) + conf[n]


def _evidence_split(results: Sequence[JobResult]) -> str:
    if any(r.job.fold is not None for r in results):
        return OOF
    if all(VAL in r.evaluations for r in results):
        return VAL
    return TEST


def _macro(confusions: Sequence[np.ndarray]) -> np.ndarray:
    return np.asarray(metrics.macro_iou(np.stack(confusions)), dtype=float)


def _stability(
    per_image: dict[str, np.ndarray], by_fold: dict[str, dict[str, np.ndarray]], seed: int
) -> tuple[dict[str, float], dict[str, float | None], float | None]:
    """Share of bootstrap resamples and of folds each combination is best in; mean Kendall tau
    between the folds' rankings (None without folds or with fewer than two combinations)."""
    from scipy import stats

    names = list(per_image)
    matrix = np.stack([per_image[n] for n in names])
    rng = np.random.default_rng(seed)
    n = matrix.shape[1]
    means = matrix[:, rng.integers(0, n, size=(N_BOOT, n))].mean(axis=2)
    wins = np.bincount(means.argmax(axis=0), minlength=len(names)) / N_BOOT
    in_boot = {name: float(w) for name, w in zip(names, wins, strict=True)}
    folds = sorted(by_fold)
    if not folds:
        return in_boot, dict.fromkeys(names), None
    fold_means = np.array([[by_fold[f][name] for f in folds] for name in names])  # (combos, folds)
    best = np.bincount(fold_means.argmax(axis=0), minlength=len(names)) / len(folds)
    in_folds: dict[str, float | None] = {
        name: float(b) for name, b in zip(names, best, strict=True)
    }
    taus = []
    if len(names) >= 2:
        for a, b in combinations(range(len(folds)), 2):
            tau = stats.kendalltau(fold_means[:, a], fold_means[:, b]).statistic
            if not math.isnan(tau):
                taus.append(float(tau))
    return in_boot, in_folds, (float(np.mean(taus)) if taus else None)


def _versus(c: Comparison, note: str = "") -> Versus:
    return Versus(
        n_images=c.n_images, mean_difference=c.mean_difference, ci=list(c.ci), p=c.p,
        p_holm=c.p_holm, p_equivalent=c.p_equivalent, p_equivalent_holm=c.p_equivalent_holm,
        verdict=c.verdict, note=note,
    )  # fmt: skip


def _cost(e: Evidence) -> tuple[int, float]:
    return (e.parameters, e.latency_ms if e.latency_ms is not None else math.inf)


def _target_name(target: str | None, classes: list[str], notes: list[str]) -> str | None:
    """The target as 'quantity:class' of this dataset, or None (with a note) when it has no
    such class."""
    if target is None:
        return None
    try:
        return Target.parse(target, classes).name
    except SpecError as exc:
        notes.append(f"target {target!r} does not apply to this dataset ({exc}): ranked by IoU")
        return None


def _target_errors(
    pooled: dict[tuple[str, str, str], _Pooled],
    names: dict[tuple[str, str, str], str],
    keys: list[str],
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray] | None:
    """Per combination, the target's signed error on each image (predictions pooled over seeds
    and repeats), the constant's, and the true values; None when a combination lacks them."""
    if any(not all(k in p.truth for k in keys) for p in pooled.values()):
        return None
    first = next(iter(pooled.values()))
    truth = np.array([first.truth[k] for k in keys])
    errors = {
        names[c]: np.array([np.nanmean(p.predicted[k]) for k in keys]) - truth
        for c, p in pooled.items()
    }
    constant = np.array([np.nanmean(first.constant[k]) for k in keys]) - truth
    return errors, constant, truth


def decide_dataset(
    results: Sequence[JobResult],
    tie_margin: float = TIE_MARGIN,
    alpha: float = ALPHA,
    seed: int = 0,
    ranking_by: Ranking = Ranking(),
) -> DatasetDecision | None:
    """The decision on one dataset from its finished jobs (None when none has evidence)."""
    split = _evidence_split(results)
    usable = [r for r in results if split in r.evaluations and r.evaluations[split].confusions]
    if not usable:
        return None
    notes: list[str] = []
    target = _target_name(ranking_by.target, usable[0].classes, notes)
    pooled: dict[tuple[str, str, str], _Pooled] = defaultdict(_Pooled)
    for r in usable:
        pooled[(r.job.encoder, r.job.decoder, r.job.weights)].add(r, split)
        if target is not None:
            pooled[(r.job.encoder, r.job.decoder, r.job.weights)].add_target(r, split, target)
    keys = sorted(set.intersection(*(set(p.confusion) for p in pooled.values())))
    every = set().union(*(set(p.confusion) for p in pooled.values()))
    if len(keys) < len(every):
        notes.append(
            f"{len(every) - len(keys)} of {len(every)} images lack a prediction by some "
            "combination (unfinished jobs): compared on the remaining "
            f"{len(keys)}"
        )
    names = {combo: combination_name(*combo) for combo in pooled}
    scores = {names[c]: _macro([p.confusion[k] for k in keys]) for c, p in pooled.items()}
    finite = np.all([np.isfinite(s) for s in scores.values()], axis=0)
    if not finite.all():
        notes.append(f"{int((~finite).sum())} image(s) without a defined macro IoU left out")
    keys = [k for k, ok in zip(keys, finite, strict=True) if ok]
    if not keys:
        return None  # no image that every combination predicted, with a defined IoU
    scores = {name: s[finite] for name, s in scores.items()}
    first = next(iter(pooled.values()))
    constants = {name: _macro([first.constants[name][k] for k in keys]) for name in first.constants}
    iou_scores, iou_constants = scores, constants
    found = _target_errors(pooled, names, keys) if target is not None else None
    if target is not None and found is None:
        notes.append(f"no {target} values in these jobs' results (written before matseg "
                     "measured quantities): ranked by IoU")  # fmt: skip
    by_target = found is not None and ranking_by.by == "target"
    if found is not None:
        errors, constant_error, truth = found
        defined = np.isfinite(truth) & np.isfinite(constant_error)
        for e in errors.values():
            defined &= np.isfinite(e)
        if by_target:
            if int(defined.sum()) < len(keys):
                notes.append(f"{len(keys) - int(defined.sum())} image(s) without a defined "
                             f"{target} left out of the ranking")  # fmt: skip
            keys = [k for k, ok in zip(keys, defined, strict=True) if ok]
            errors = {n: e[defined] for n, e in errors.items()}
            constant_error, truth = constant_error[defined], truth[defined]
            iou_scores = {n: s[defined] for n, s in scores.items()}
            iou_constants = {n: c[defined] for n, c in constants.items()}
            if not keys:
                return None
            # ranked by the target: higher is better, so the scores are minus the absolute error
            scores = {n: -np.abs(e) for n, e in errors.items()}
            constants = {"training mean": -np.abs(constant_error)}
            tie_margin = ranking_by.target_tie_margin or float(
                TARGET_MARGIN_SHARE * np.mean(np.abs(truth))
            )
    by_fold: dict[str, dict[str, float]] = defaultdict(dict)
    for combo, p in pooled.items():
        for fold, confusions in p.by_fold.items():
            fold_keys = [k for k in keys if k in confusions]
            if not fold_keys:
                continue
            if by_target:  # the fold's mean score: minus its mean absolute target error
                at = [keys.index(k) for k in fold_keys]
                by_fold[fold][names[combo]] = float(np.mean(scores[names[combo]][at]))
            else:
                by_fold[fold][names[combo]] = float(
                    np.nanmean(_macro([confusions[k] for k in fold_keys]))
                )
    complete_folds = {f: v for f, v in by_fold.items() if len(v) == len(pooled)}
    in_boot, in_folds, tau = _stability(scores, complete_folds, seed)

    # constants: does each combination beat the better of them on the same images?
    constant_name = max(constants, key=lambda n: float(np.mean(constants[n])))
    constant = constants[constant_name]
    p_const = holm([signed_rank(s - constant, "greater") for s in scores.values()])
    # With few images no one-sided signed-rank test can reach alpha after Holm over the grid
    # (smallest p: len(pooled) / 2**n): then a higher mean is all the evidence there is.
    testable = len(pooled) / 2 ** len(keys) < alpha
    if not testable:
        notes.append(
            f"{len(keys)} images are too few to test any combination against the constants "
            f"(smallest possible corrected p = {min(1.0, len(pooled) / 2 ** len(keys)):.3f}): "
            "a higher mean IoU than the better constant is taken as beating it"
        )
    evidence: dict[str, Evidence] = {}
    for (combo, p), p_c in zip(pooled.items(), p_const, strict=True):
        name = names[combo]
        stacked = np.stack([p.confusion[k] for k in keys])
        freqs = np.mean([r.train_class_frequencies for r in p.jobs if r.train_class_frequencies]
                        or [np.ones(stacked.shape[-1])], axis=0)  # fmt: skip
        classes = p.jobs[0].classes
        estimate = metrics.score_images(stacked, classes, freqs, n_boot=N_BOOT, seed=seed)
        latencies = [r.latency_ms_256 for r in p.jobs if r.latency_ms_256 is not None]
        difference = float(np.mean(scores[name] - constant))
        target_fields = {}
        if found is not None:
            err = found[0][name]
            err = err[np.isfinite(err)]
            if err.size:
                boot = np.abs(err)[np.random.default_rng(seed).integers(
                    0, err.size, size=(N_BOOT, err.size))].mean(axis=1)  # fmt: skip
                target_fields = {
                    "target_error": float(np.abs(err).mean()),
                    "target_error_ci": [float(v) for v in np.percentile(boot, [2.5, 97.5])],
                    "target_bias": float(err.mean()),
                }
        evidence[name] = Evidence(
            name=name, encoder=combo[0], decoder=combo[1], weights=combo[2],
            jobs=[r.job.hash for r in p.jobs], mean_iou=float(np.mean(scores[name])),
            macro_iou=_number(estimate.macro_iou),
            macro_iou_ci=[_number(v) for v in estimate.ci.get("macro_iou", (None, None))],
            foreground_iou=_number(estimate.foreground_iou),
            converged=all(r.converged for r in p.jobs),
            parameters=p.jobs[0].parameters,
            latency_ms=float(np.median(latencies)) if latencies else None,
            beats_constant=bool((p_c < alpha or not testable) and difference > 0),
            constant_difference=difference, constant_p_holm=float(p_c),
            best_in_folds=in_folds[name], best_in_bootstrap=in_boot[name], **target_fields,
        )  # fmt: skip
    mean_score = {name: float(np.mean(v)) for name, v in scores.items()}
    ranking = sorted(evidence.values(), key=lambda e: (-mean_score[e.name], _cost(e)))
    with_error = [e for e in ranking if e.target_error is not None]
    if target is not None and len(with_error) > 1:
        top_iou = max(with_error, key=lambda e: e.mean_iou)
        top_target = min(with_error, key=lambda e: e.target_error or math.inf)
        if top_iou.name != top_target.name:
            notes.append(
                f"IoU and the {target} error disagree on the best: {top_iou.name} has the "
                f"highest IoU ({top_iou.mean_iou:.3f}), {top_target.name} the smallest {target} "
                f"error ({top_target.target_error:.3g} against {top_iou.target_error:.3g})"
            )
    decision = DatasetDecision(
        dataset=usable[0].job.dataset,
        protocol={OOF: "cv", VAL: "holdout", TEST: "test"}[split],
        evidence=split,
        test_kept=not any(r.job.fold is not None and r.job.fold.test == "none" for r in usable),
        folds=usable[0].job.fold.folds if split == OOF and usable[0].job.fold else None,
        repeats=usable[0].job.fold.repeats if split == OOF and usable[0].job.fold else None,
        seeds=sorted({r.job.seed for r in usable}),
        tie_margin=tie_margin, alpha=alpha, images=keys, ranking=ranking,
        baselines={name: float(np.mean(v)) for name, v in iou_constants.items()},
        per_image={name: [float(v) for v in s] for name, s in iou_scores.items()},
        kendall_tau_folds=tau, verdict="", recommended=None, tied=[], reasons=[], notes=notes,
        ranked_by=target if by_target and target else "iou", target=target if found else None,
        target_unit=next(iter(pooled.values())).unit if found else None,
        target_baseline_error=float(np.nanmean(np.abs(found[1]))) if found else None,
    )  # fmt: skip
    return _verdict(decision, scores, constant_name, seed)


def _number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _verdict(
    d: DatasetDecision, scores: dict[str, np.ndarray], constant: str, seed: int
) -> DatasetDecision:
    """Test the eligible combinations against the best; the verdict, the pick and the reasons."""
    eligible = [e for e in d.ranking if e.beats_constant]
    n = len(d.images)
    where = EVIDENCE_WORDS[d.evidence]
    for e in d.ranking:
        if not e.beats_constant:
            against = (
                f"{where} IoU {e.mean_iou:.3f} against {d.baselines[constant]:.3f} for "
                f"predicting '{constant}' everywhere"
                if d.ranked_by == "iou"
                else f"{where} {d.ranked_by} error {_value(d, e)} against "
                f"{_number_words(d.target_baseline_error, d)} for predicting the training "
                "images' mean for every image"
            )
            d.reasons.append(
                f"{e.name} is no better than a constant: {against} (Holm p = "
                f"{e.constant_p_holm:.3f}); never recommended"
            )
    if not eligible:
        d.verdict = "no better than a constant"
        d.reasons.append("no combination beats a constant prediction: none is recommended")
        return d
    best = eligible[0]
    if len(eligible) == 1:
        alone = len(d.ranking) == 1
        d.verdict = "only one combination" if alone else "only one beats a constant"
        d.recommended, d.tied = best.name, [best.name]
        d.reasons.append(
            f"only {best.name} was evaluated" if alone
            else f"{best.name} is the only combination better than a constant: recommended"
        )  # fmt: skip
        _say_if_provisional(d)
        return d
    compared = compare_to_best(
        {e.name: scores[e.name] for e in eligible}, margin=d.tie_margin, alpha=d.alpha,
        seed=seed,
    )  # fmt: skip
    smallest = 2.0 / 2**n  # the smallest two-sided p an exact signed-rank test can give
    for c in compared:
        other = next(e for e in eligible if e.name == c.other)
        note = ""
        if c.verdict == "better" and not (best.converged and other.converged):
            note = "not converged: no 'better' verdict"
        other.versus_best = _versus(c, note)
        if note:
            other.versus_best.verdict = "undecided"
    others = eligible[1:]
    verdicts = [e.versus_best.verdict for e in others if e.versus_best]
    runner = others[0]
    rv = runner.versus_best
    assert rv is not None
    highest = (
        f"the highest {where} IoU ({best.mean_iou:.3f}, mean of {n} images)"
        if d.ranked_by == "iou"
        else f"the smallest {where} {d.ranked_by} error ({_value(d, best)}, mean absolute error "
        f"over {n} images)"
    )
    d.reasons.append(
        f"{best.name} has {highest}; "
        f"the runner-up {runner.name} has {_value(d, runner)} (difference "
        f"{rv.mean_difference:+.3f}, paired bootstrap 95% CI [{rv.ci[0]:+.3f}, {rv.ci[1]:+.3f}]"
        f", Wilcoxon p = {rv.p:.3f}, Holm-corrected over the grid p = {rv.p_holm:.3f})"
    )
    unsettled = [e.name for e in (best, *others) if not e.converged]
    if all(v == "better" for v in verdicts):
        d.verdict, d.recommended, d.tied = "better", best.name, [best.name]
        d.reasons.append(f"{best.name} is better than every other combination: recommended")
    elif all(v in ("better", "equivalent") for v in verdicts):
        tied = [best] + [e for e in others if e.versus_best and e.versus_best.verdict ==
                         "equivalent"]  # fmt: skip
        pick = min(tied, key=_cost)
        d.verdict, d.recommended, d.tied = "tie", pick.name, [e.name for e in tied]
        d.reasons.append(
            f"proved equivalent within +-{_number_words(d.tie_margin, d)} {_measure(d)} "
            f"({', '.join(d.tied)}): the "
            f"cheapest, {pick.name} ({pick.parameters / 1e6:.1f} M parameters"
            + (f", {pick.latency_ms:.0f} ms per 256 px image" if pick.latency_ms else "")
            + "), is recommended"
        )
    else:
        d.verdict, d.recommended, d.tied = "inconclusive", best.name, [best.name]
        undecided = [e.name for e in others if e.versus_best and
                     e.versus_best.verdict == "undecided"]  # fmt: skip
        d.reasons.append(
            f"inconclusive: neither better nor proved equivalent against {', '.join(undecided)};"
            f" {best.name} is recommended provisionally"
        )
        if smallest >= d.alpha:
            d.reasons.append(
                f"with {n} images no paired test can reach p < {d.alpha} (smallest possible "
                f"Wilcoxon p = {smallest:.3f}): "
                + (
                    "use cross-validation (evaluation.protocol 'cv')"
                    if d.evidence != OOF
                    else "label more images"
                )
            )
        if unsettled:
            d.reasons.append(
                f"{' and '.join(unsettled)} "
                + ("was" if len(unsettled) == 1 else "were")
                + " stopped by the training budget while validation IoU was still rising (not "
                "converged): train longer (more max_epochs) for a verdict"
            )
    if d.verdict != "inconclusive":
        _say_if_provisional(d)
    if d.evidence == TEST:
        d.notes.append(
            "chosen on the test split (a run folder from before matseg 0.3 has no other "
            "evidence): its test IoU is an optimistic estimate"
        )
    return d


def _number_words(value: float | None, d: DatasetDecision) -> str:
    """A ranking figure in words: IoU to three decimals, a target's error with its unit."""
    if value is None:
        return "undefined"
    if d.ranked_by == "iou":
        return f"{value:.3f}"
    unit = "" if d.target_unit in (None, "", "1") else f" {d.target_unit}"
    return f"{value:.3g}{unit}"


def _measure(d: DatasetDecision) -> str:
    """What ranked the combinations, in words."""
    return "IoU" if d.ranked_by == "iou" else f"{d.ranked_by} error"


def _value(d: DatasetDecision, e: Evidence) -> str:
    """What ranked ``e``: its mean IoU, or its mean absolute target error."""
    return _number_words(e.mean_iou if d.ranked_by == "iou" else e.target_error, d)


def _say_if_provisional(d: DatasetDecision) -> None:
    """A recommended combination that had not converged is only provisionally recommended."""
    pick = next((e for e in d.ranking if e.name == d.recommended), None)
    if pick is not None and not pick.converged:
        d.reasons.append(
            f"{pick.name} was stopped by the training budget while validation IoU was still "
            "rising (not converged): recommended provisionally; train longer (more max_epochs)"
        )


def decide(
    results: Sequence[JobResult],
    tie_margin: float = TIE_MARGIN,
    seed: int = 0,
    ranking_by: Ranking = Ranking(),
) -> list[DatasetDecision]:
    """One decision per dataset (in the order the datasets first appear), on the final jobs
    (grid jobs, or the last rung of successive halving)."""
    by_dataset: dict[str, list[JobResult]] = defaultdict(list)
    for r in results:
        if r.job.final:
            by_dataset[r.job.dataset].append(r)
    return [
        d
        for rs in by_dataset.values()
        if (d := decide_dataset(rs, tie_margin, seed=seed, ranking_by=ranking_by))
    ]


class HalvingRung(_Model):
    """One rung of successive halving: what trained, on what budget, and what was dropped."""

    index: int
    epochs: int
    combinations: list[str]
    jobs: list[str]
    epochs_run: int  # epochs actually trained by the rung's jobs (early stopping included)
    dropped: dict[str, str]  # "dataset: combination" -> why


class Halving(_Model):
    """The rungs of a successive-halving search (``halving.json``)."""

    rate: int
    rungs: list[HalvingRung]
    epochs_run: int


def halving_drops(decisions: Sequence[DatasetDecision]) -> dict[tuple[str, str], str]:
    """(dataset, combination) -> why, for every combination a rung's evidence already shows
    worse than the best (Holm-corrected paired test and CI, as a "better" verdict; at a short
    rung no model has converged, so the convergence guard is not applied here) or no better
    than a constant while another is. The rung's best always goes on, so a rung never drops
    everything."""
    out = {}
    for d in decisions:
        eligible = [e for e in d.ranking if e.beats_constant]
        best = eligible[0].name if eligible else d.ranking[0].name
        for e in d.ranking:
            v = e.versus_best
            if e.name == best:
                continue  # the rung's best always goes on
            if not e.beats_constant:
                if eligible:  # at a short rung none may beat a constant yet: then keep all
                    out[(d.dataset, e.name)] = "no better than a constant"
            elif (
                v is not None and v.verdict != "equivalent" and v.p_holm < d.alpha
                and v.mean_difference > 0 and v.ci[0] > 0
            ):  # fmt: skip
                out[(d.dataset, e.name)] = (
                    f"worse than {best} by {v.mean_difference:.3g} {_measure(d)} (Holm p = "
                    f"{v.p_holm:.3g})"
                )
    return out


def decide_run(run: RunDir, results: Sequence[JobResult] | None = None) -> list[DatasetDecision]:
    """The decisions of a run folder, with its profile's ``evaluation.tie_margin``."""
    profile = run.read_profile_data()
    evaluation = profile.get("evaluation") or {}
    results = run.results() if results is None else results
    tie_margin = float(evaluation.get("tie_margin", TIE_MARGIN))
    return decide(results, tie_margin, ranking_by=Ranking.of_profile(profile))


def recommended_combinations(
    decisions: Sequence[DatasetDecision],
) -> dict[str, tuple[str, str, str]]:
    """dataset -> (encoder, decoder, weights) of its recommended combination."""
    out = {}
    for d in decisions:
        pick = next((e for e in d.ranking if e.name == d.recommended), None)
        if pick is not None:
            out[d.dataset] = (pick.encoder, pick.decoder, pick.weights)
    return out
