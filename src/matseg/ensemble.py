"""Fold ensembles: the fold models of one combination, used as one model.

After cross-validation every combination has ``folds x repeats x seeds`` trained models, each of
which saw part of the development set. Their mean class probability
(:class:`matseg.models.FoldEnsemble`) is the deployment model of the combination, and the one
the test split scores ONCE, at the end, after the decision was made on out-of-fold evidence. Each
fold model alone is scored on the same images too, to say whether the ensemble is worth its cost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from matseg import metrics
from matseg.decision import N_BOOT
from matseg.job import PreparedData, evaluate_split
from matseg.models import FoldEnsemble
from matseg.results import (
    OOF,
    EnsembleResult,
    JobResult,
    SelectionGap,
    SplitResult,
    ensemble_hash,
    fold_groups,
)
from matseg.rundir import RunDir
from matseg.trained import load_model

Say = Callable[[str], None]


def scored_splits(data: PreparedData, members: Sequence[JobResult]) -> list[str]:
    """The splits an ensemble is scored on: the test split (unless cross-validation used it as
    development images) and the shift sets."""
    fold = members[0].job.fold
    used = {"train", "val"} | ({"test"} if fold is not None and fold.test == "none" else set())
    splits = data.inspection.split.splits
    return sorted(s for s in splits if s not in used and splits[s])


def out_of_fold_confusions(members: Sequence[JobResult]) -> np.ndarray:
    """(N, K, K) held-out confusions of the members, one per development image (summed over
    repeats and seeds, which predict the same image more than once)."""
    by_image: dict[str, np.ndarray] = {}
    for r in members:
        ev = r.evaluations.get(OOF)
        if ev is None:
            continue
        for ref, cm in zip(ev.images, ev.confusions, strict=True):
            by_image[ref.key] = by_image.get(ref.key, 0) + np.asarray(cm, dtype=np.int64)
    return np.stack([by_image[k] for k in sorted(by_image)]) if by_image else np.empty((0,))


def selection_gap(
    members: Sequence[JobResult],
    test_confusions: Sequence[np.ndarray],
    ensemble_test: SplitResult | None,
    seed: int,
) -> SelectionGap | None:
    """The fold models alone on the test images against their out-of-fold estimate."""
    oof = out_of_fold_confusions(members)
    if not len(oof) or not test_confusions or ensemble_test is None:
        return None
    difference, lo, hi = metrics.pooled_difference(oof, test_confusions, N_BOOT, seed)
    members_test = float(np.mean([metrics.macro_iou(c.sum(axis=0)) for c in test_confusions]))
    return SelectionGap(
        out_of_fold=_finite(metrics.macro_iou(oof.sum(axis=0))), members_test=_finite(members_test),
        ensemble_test=_finite(ensemble_test.scores.macro_iou), difference=_finite(difference),
        ci=[_finite(lo), _finite(hi)], out_of_fold_images=len(oof),
        test_images=len(test_confusions[0]),
    )  # fmt: skip


def _finite(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def score_ensemble(
    run: RunDir, members: Sequence[JobResult], data: PreparedData
) -> EnsembleResult | None:
    """Score one combination's fold ensemble (and each member alone) on the test split and shift
    sets, keeping the ensemble's masks; None when there is nothing to score."""
    splits = scored_splits(data, members)
    if not splits:
        return None
    name = ensemble_hash(members)
    first = members[0].job
    development = [i.key for i in data.development_items(first.fold.test if first.fold else "")]
    frequencies = data.frequencies(development)
    models = [load_model(run, r) for r in members]
    ensemble = FoldEnsemble(models).eval()
    evaluations, alone, member_mean, test_confusions = {}, {}, {}, []
    for split in splits:
        images = data.dataset.split(split)
        evaluations[split] = evaluate_split(
            ensemble, images, split, first.training, first.seed, frequencies,
            lambda split, key, mask: run.write_ensemble_prediction(name, split, key, mask),
        )  # fmt: skip
        singles = {
            r.job.hash: evaluate_split(m, images, split, first.training, first.seed, frequencies)
            for r, m in zip(members, models, strict=True)
        }
        alone[split] = {h: s.scores.macro_iou for h, s in singles.items()}
        if split == "test":
            test_confusions = [np.asarray(s.confusions) for s in singles.values()]
        per_image = np.array(
            [[np.nan if v is None else v for v in s.scores.per_image.macro_iou]
             for s in singles.values()]
        )  # fmt: skip
        member_mean[split] = [
            None if np.isnan(v) else float(v) for v in np.nanmean(per_image, axis=0)
        ]
    result = EnsembleResult(
        hash=name, dataset=first.dataset, encoder=first.encoder, decoder=first.decoder,
        weights=first.weights, members=[r.job.hash for r in members], classes=members[0].classes,
        evaluations=evaluations, members_macro_iou=alone, members_per_image=member_mean,
        selection_gap=selection_gap(members, test_confusions, evaluations.get("test"), first.seed),
    )  # fmt: skip
    run.write_ensemble(result)
    return result


def score_ensembles(
    run: RunDir,
    results: Sequence[JobResult],
    prepared: dict[str, PreparedData],
    say: Say | None = None,
) -> list[EnsembleResult]:
    """Every combination's fold ensemble, scored once (one already on disk is kept)."""
    out = []
    for (dataset, encoder, decoder, _), members in fold_groups(results).items():
        existing = run.read_ensemble(ensemble_hash(members))
        if existing is not None:
            out.append(existing)
            continue
        if say is not None:
            say(f"scoring the fold ensemble of {dataset} / {encoder} + {decoder} on the test split")
        scored = score_ensemble(run, members, prepared[dataset])
        if scored is not None:
            out.append(scored)
    return out
