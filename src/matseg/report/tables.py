"""The report's tables, from a record: rows of plain values, written as CSV and Markdown."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matseg.atomic import table_csv_bytes
from matseg.quantities import QuantityError, summarise_errors
from matseg.record import EvaluationRecord, SplitEvaluation
from matseg.report.recommend import DatasetRecommendation, Recommendation
from matseg.results import EVIDENCE_WORDS

Table = tuple[list[str], list[list[Any]]]  # header, rows


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table cell; missing values are an en dash, never a fake number."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(ev: SplitEvaluation, name: str) -> str:
    low_high = ev.ci.get(name) or [None, None]
    if low_high[0] is None or low_high[1] is None:
        return "–"
    return f"[{low_high[0]:.3f}, {low_high[1]:.3f}]"


# The optional scores of Table 3 by the profile's ``task.metrics`` name: column, attribute.
OPTIONAL_SCORES = {
    "dice": ("Dice", "dice"),
    "pixel_accuracy": ("pixel acc.", "pixel_accuracy"),
    "weighted_iou": ("wIoU", "weighted_iou"),
}


def shown_metrics(profile: dict[str, Any]) -> list[str]:
    """The optional scores the profile's ``task.metrics`` asks the tables to show (IoU always
    shows: it ranks the combinations)."""
    asked = (profile.get("task") or {}).get("metrics") or list(OPTIONAL_SCORES)
    return [m for m in OPTIONAL_SCORES if m in asked]


NOT_CONVERGED = "not converged"


def epochs_cell(epochs: int, converged: bool | None) -> str:
    """Epochs run, marked when a budget stopped training while validation IoU still rose."""
    return f"{epochs} ({NOT_CONVERGED})" if converged is False else str(epochs)


def grid_table(record: EvaluationRecord) -> Table:
    """The paper's Table 3: every job and evaluated split, with CIs and trivial baselines."""
    extra = shown_metrics(record.run.profile)
    header = [
        "dataset", "split", "encoder", "decoder", "weights", "seed", "macro IoU", "95% CI",
        "foreground IoU", "95% CI (fg)", *(OPTIONAL_SCORES[m][0] for m in extra),
        "majority IoU", "all-fg IoU", "epochs", "train s", "params (M)", "ms / 256 px",
    ]  # fmt: skip
    target = (record.run.profile.get("task") or {}).get("target")
    if target:
        header.insert(10, f"{target} error")
    rows = []
    for j in record.jobs:
        for split, ev in j.evaluations.items():
            target_cell = [_target_error(ev, target)] if target else []
            majority = ev.baselines.get("majority class", {}).get("macro_iou")
            all_fg = ev.baselines.get("all foreground", {}).get("foreground_iou")
            rows.append([
                j.dataset, split, j.encoder, j.decoder, j.weights, j.seed, fmt(ev.macro_iou),
                _ci(ev, "macro_iou"), fmt(ev.foreground_iou), _ci(ev, "foreground_iou"),
                *target_cell, *(fmt(getattr(ev, OPTIONAL_SCORES[m][1])) for m in extra),
                fmt(majority),
                fmt(all_fg), epochs_cell(j.epochs, j.converged), fmt(j.train_seconds, 0),
                fmt(j.parameters / 1e6, 2), fmt(j.latency_ms_256, 0),
            ])  # fmt: skip
    return header, rows


def _target_error(ev: SplitEvaluation, target: str) -> str:
    """Mean absolute error of the target quantity over an evaluation's images ('grain_size'
    names 'grain_size:<its boundary class>')."""
    key = next((k for k in ev.quantities if k == target or k.startswith(f"{target}:")), None)
    if key is None:
        return "–"
    v = ev.quantities[key]
    errors = [abs(p - t) for t, p in zip(v.truth, v.predicted, strict=True)
              if t is not None and p is not None]  # fmt: skip
    return _significant(sum(errors) / len(errors)) if errors else "–"


def _interval(low_high: Sequence[float | None], form: str = ".3f") -> str:
    lo, hi = [*low_high, None, None][:2]
    return "–" if lo is None or hi is None else f"[{lo:{form}}, {hi:{form}}]"


def _significant(value: float | None) -> str:
    """A quantity in any unit (fractions, µm, µm⁻²): four significant digits."""
    return "–" if value is None else f"{value:.4g}"


def best_table(rec: Recommendation) -> Table:
    """The paper's Table 2, chosen honestly: per dataset, the recommended combination with the
    evidence it was chosen on and its test estimate (scored once, after the choice)."""
    header = ["dataset", "modality", "recommended", "verdict", "chosen on", "IoU", "95% CI",
              "test macro IoU", "95% CI (test)", "selection gap", "constant IoU",
              "converged"]  # fmt: skip
    targeted = any(d.decision.target for d in rec.datasets)
    if targeted:  # the task's target beside IoU: its error on the evidence images
        header[7:7] = ["target", "target error", "95% CI (target error)", "ranked by"]
    rows = []
    for d in rec.datasets:
        c = d.recommended
        e = c.evidence if c else None
        target = [] if not targeted else [
            d.decision.target or "–", _significant(e.target_error) if e else "–",
            _interval(e.target_error_ci, ".4g") if e else "–", d.decision.ranked_by,
        ]  # fmt: skip
        rows.append([d.dataset, d.modality, d.use, d.verdict, EVIDENCE_WORDS[d.decision.evidence],
                     fmt(e.macro_iou) if e else "–", _interval(e.macro_iou_ci) if e else "–",
                     *target,
                     fmt(c.test_iou) if c else "–", _interval(c.test_ci) if c else "–",
                     fmt(d.selection_gap), fmt(max(d.decision.baselines.values())),
                     ("yes" if c.converged else NOT_CONVERGED) if c else "–"])  # fmt: skip
    return header, rows


def ranking_table(d: DatasetRecommendation) -> Table:
    """One dataset's ranking on the decision's evidence: every combination against the best,
    corrected p-values, equivalence, the constants, stability, and the test (not a choice)."""
    header = ["combination", "mean IoU", "pooled IoU", "95% CI", "vs best", "95% CI (diff.)",
              "p", "p (Holm)", "p equiv. (Holm)", "verdict", "beats constant (Holm p)",
              "best in folds", "best in bootstrap", "converged",
              "test IoU (not used for any choice)"]  # fmt: skip
    target = d.decision.target
    if target is not None:  # the quantity the task is for, beside IoU
        unit = "" if d.decision.target_unit in (None, "1") else f", {d.decision.target_unit}"
        header[1:1] = [f"{target} error{unit}", "95% CI (error)", f"{target} bias"]
    rows = []
    best = next((c for c in d.ranking if c.evidence.beats_constant), None)
    for c in d.ranking:
        e, v = c.evidence, c.evidence.versus_best
        extra = [] if target is None else [
            _significant(e.target_error), _interval(e.target_error_ci, ".4g"),
            _significant(e.target_bias),
        ]  # fmt: skip
        rows.append([
            c.name, *extra, fmt(e.mean_iou), fmt(e.macro_iou), _interval(e.macro_iou_ci),
            f"{v.mean_difference:+.3f}" if v else ("best" if c is best else "–"),
            _interval(v.ci) if v else "–", fmt(v.p) if v else "–",
            fmt(v.p_holm) if v else "–", fmt(v.p_equivalent_holm) if v else "–",
            v.verdict if v else ("–" if e.beats_constant else "no better than a constant"),
            f"{'yes' if e.beats_constant else 'NO'} ({e.constant_p_holm:.3f})",
            fmt(e.best_in_folds, 2), fmt(e.best_in_bootstrap, 2),
            "yes" if e.converged else NOT_CONVERGED, fmt(c.test_iou),
        ])  # fmt: skip
    return header, rows


def quality_table(record: EvaluationRecord) -> Table:
    """Per quality-controlled job and scenario: the chosen detector's metrics and the verdict."""
    header = ["dataset", "job", "scenario", "detector", "AUROC", "FPR@95TPR", "F1", "precision",
              "recall", "images flagged", "verdict"]  # fmt: skip
    rows = []
    for q in record.quality:
        for scenario, by_detector in q.scenarios.items():
            m = by_detector.get(q.detector, {})
            rows.append([q.dataset, q.job, scenario, q.detector, fmt(m.get("auroc")),
                         fmt(m.get("fpr_at_95_tpr")), fmt(m.get("f1")), fmt(m.get("precision")),
                         fmt(m.get("recall")), fmt(m.get("ood_images_flagged"), 2),
                         "ready" if q.ready else "NOT READY"])  # fmt: skip
        if not q.scenarios:
            rows.append([q.dataset, q.job, "–", q.detector] + ["–"] * 6 + [q.reason])
    return header, rows


def explanation_table(record: EvaluationRecord) -> Table:
    header = ["dataset", "job", "image", "region", "kernel", "window", "faithfulness AUC ratio",
              "share of H in A", "area of A", "seconds"]  # fmt: skip
    rows = [
        [e.dataset, e.job, e.image.rsplit("/", 1)[-1], e.roi, e.kernel, e.window,
         fmt(e.faithfulness_auc_ratio, 1), fmt(e.concentration.get("roi_share"), 2),
         fmt(e.concentration.get("roi_area"), 2), fmt(e.seconds, 1)]
        for e in record.explanations
    ]  # fmt: skip
    return header, rows


def recommendation_table(rec: Recommendation) -> Table:
    header = ["dataset", "modality", "difficulty", "best", "IoU", "runner-up", "IoU",
              "verdict", "recommended"]  # fmt: skip
    rows = []
    for d in rec.datasets:
        second = d.ranking[1] if len(d.ranking) > 1 else None
        rows.append([d.dataset, d.modality, d.difficulty or "–", d.ranking[0].name,
                     fmt(d.ranking[0].iou), second.name if second else "–",
                     fmt(second.iou) if second else "–", d.verdict,
                     d.use])  # fmt: skip
    return header, rows


def to_csv(table: Table) -> bytes:
    header, rows = table
    return table_csv_bytes(header, rows)


def markdown_safe(text: str) -> str:
    """Markdown in which text from a record (dataset names, objectives, file names, notes) can
    neither run nor link: HTML's ``<``, ``>`` and ``&`` become entities (a Markdown viewer
    passes raw HTML through: ``<script>``, ``<img onerror>``) and a link's ``](`` is broken.
    matseg's own Markdown uses neither, so the whole report is escaped at once."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("](", "]\\(")


def to_markdown(table: Table) -> str:
    header, rows = table

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]  # fmt: skip
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def shown_quantities(d: DatasetRecommendation) -> list[str]:
    """The quantities the report shows for a dataset: the task's target, else every default
    quantity the recommended combination's test evaluation holds."""
    pick = d.recommended
    if pick is None:
        return []
    if d.decision.target is not None and d.decision.target in pick.test_quantities:
        return [d.decision.target]
    return list(pick.test_quantities)


def quantity_table(rec: Recommendation, names: Sequence[str] | None = None) -> Table:
    """Per dataset, the recommended combination's microstructure quantities on the test images
    (scored once, after the choice): truth and prediction, bias and mean absolute error with
    bootstrap 95% CIs, and the mean Kolmogorov-Smirnov distance of size distributions.
    ``names``: these quantities ('quantity:class') instead of :func:`shown_quantities`."""
    header = ["dataset", "combination", "quantity", "unit", "images", "true mean",
              "predicted mean", "bias", "95% CI (bias)", "mean abs. error", "95% CI (error)",
              "KS (size distributions)"]  # fmt: skip
    rows = []
    for d in rec.datasets:
        pick = d.recommended
        for name in shown_quantities(d) if names is None else names:
            if pick is None or name not in pick.test_quantities:
                continue
            v = pick.test_quantities[name]
            errors = [
                QuantityError(t, p)
                for t, p in zip(v.truth, v.predicted, strict=True)
                if t is not None and p is not None
            ]
            s = summarise_errors(errors)
            if not s.n_images:
                continue
            ks = [k for k in v.ks if k is not None]
            rows.append([
                d.dataset, pick.name, name, v.unit, s.n_images,
                _significant(float(sum(e.truth for e in errors) / len(errors))),
                _significant(float(sum(e.predicted for e in errors) / len(errors))),
                _significant(s.bias), _interval(s.bias_ci, ".4g"),
                _significant(s.mean_absolute_error), _interval(s.mean_absolute_error_ci, ".4g"),
                fmt(sum(ks) / len(ks)) if ks else "–",
            ])  # fmt: skip
    return header, rows
