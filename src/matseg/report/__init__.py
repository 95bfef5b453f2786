"""The report: one self-contained HTML file (figures embedded, no network), with the same
tables as CSV and Markdown, built from a run's evaluation record alone.

``build_report(run)`` reads ``RUN/record.json`` and writes ``report.html``, ``report.md`` and
``tables/*.csv`` beside it. User-supplied text (task descriptions, names) is escaped by Jinja2's
autoescaping, and a Content-Security-Policy allowing no script keeps injected markup inert.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matseg.atomic import write_bytes
from matseg.record import EvaluationRecord, read_record
from matseg.report import figures
from matseg.report.recommend import DatasetRecommendation, Recommendation, recommend
from matseg.report.tables import (
    Table,
    best_table,
    explanation_table,
    grid_table,
    markdown_safe,
    quality_table,
    quantity_table,
    ranking_table,
    recommendation_table,
    to_csv,
    to_markdown,
)
from matseg.results import EVIDENCE_WORDS
from matseg.rundir import RunDir


@dataclass
class ReportFiles:
    html: Path
    markdown: Path
    tables: list[Path]
    recommendation: Recommendation


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def gap_words(d: DatasetRecommendation) -> str | None:
    """The selection gap in words (evidence estimate minus the test estimate)."""
    if d.selection_gap is None:
        return None
    where = EVIDENCE_WORDS[d.decision.evidence]
    return (
        f"selection gap ({where} minus test IoU of the recommended combination): "
        f"{d.selection_gap:+.3f}"
    )


def _evaluation_words(evaluation: dict[str, Any]) -> str:
    """The evaluation protocol in a clause (profiles before matseg 0.3 had none: holdout)."""
    if evaluation.get("protocol", "holdout") == "holdout":
        return "the best validation weights are tested once on the held-out test split"
    repeats = evaluation.get("repeats", 1)
    again = f", repeated {repeats} times" if repeats > 1 else ""
    test = (
        "the test split is scored once at the end, by each combination's fold ensemble"
        if evaluation.get("test", "keep") == "keep"
        else "every labelled image is in the folds (no untouched test split)"
    )
    return (
        f"{evaluation.get('folds', 5)}-fold cross-validation{again}, each fold stopping early "
        f"on an inner validation part of its training images; {test}"
    )


def halving_words(record: EvaluationRecord) -> list[str]:
    """The rungs of a successive-halving search, one line each (none without one)."""
    h = record.halving
    if h is None:
        return []
    lines = []
    for r in h.rungs:
        dropped = "; ".join(f"{name} dropped: {why}" for name, why in r.dropped.items())
        lines.append(
            f"rung {r.index + 1} of {len(h.rungs)}: {len(r.combinations)} combination(s), "
            f"{len(r.jobs)} jobs of at most {r.epochs} epochs ({r.epochs_run} epochs trained)"
            + (f"; {dropped}" if dropped else "; none dropped")
        )
    lines.append(
        f"successive halving (rate {h.rate}) trained {h.epochs_run} epochs in all; the "
        "decision above uses the last rung only"
    )
    return lines


def plain_words(record: EvaluationRecord) -> list[str]:
    """The profile as sentences a materials scientist reads in ten seconds."""
    profile = record.run.profile
    task, model, training = (profile.get(k, {}) for k in ("task", "model", "training"))
    lines = []
    for d in record.datasets:
        what = f"{d.name}: {d.modality} images" + (f" of {d.material}" if d.material else "")
        lines.append(f"{what}, classes {', '.join(d.classes)}.")
    if task.get("objective"):
        level = f" (difficulty: {task['difficulty']})" if task.get("difficulty") else ""
        lines.append(f"Objective: {task['objective']}{level}.")
    encoders, decoders = model.get("encoders", []), model.get("decoders", [])
    lines.append(
        f"Grid: {len(encoders)} encoder(s) ({', '.join(encoders)}) x {len(decoders)} decoder(s) "
        f"({', '.join(decoders)}), encoder weights '{model.get('weights', '')}', "
        f"seeds {', '.join(map(str, record.provenance.seeds))}."
    )
    budget = (
        f", at most {training['max_minutes']} minutes per job"
        if training.get("max_minutes")
        else ""
    )
    tta = training.get("tta", "none")
    lines.append(
        f"Protocol: Adam, learning rate {training.get('learning_rate')}, "
        f"{training.get('scheduler', 'cosine')} schedule, batch {training.get('batch_size')}, "
        f"{training.get('patch_size')} px random crops, loss {training.get('loss')}, precision "
        f"{training.get('precision')}, early stopping on validation IoU (patience "
        f"{training.get('patience')}, at most {training.get('max_epochs')} epochs){budget}; "
        + _evaluation_words(profile.get("evaluation") or {})
        + (f", with {tta} test-time augmentation" if tta != "none" else "")
        + "."
    )
    return lines


def _figure_uri(run: Path, relative: str | None) -> str | None:
    if not relative:
        return None
    path = run / relative
    return data_uri(path.read_bytes()) if path.is_file() else None


def _charts(record: EvaluationRecord, run: Path, rec: Recommendation) -> list[tuple[str, str]]:
    charts = []
    for title, png in (
        (
            "IoU per combination: the decision's evidence (95% CI) and the test, scored once",
            figures.iou_by_combination(record),
        ),
        (
            "Per-image IoU differences, best against each other combination",
            figures.evidence_differences(record),
        ),
        (
            "Microstructure quantities of the recommended model on the test images, against "
            "the ground truth",
            figures.quantities_truth_vs_prediction(rec),
        ),
        (
            "Feature-size distributions of the recommended model on the test images, over the "
            "ground truth's",
            figures.size_distributions(rec),
        ),
        ("IoU across contexts", figures.spread_across_contexts(record)),
        ("Training curves", figures.training_curves(record)),
    ):
        if png is not None:
            charts.append((title, data_uri(png)))
    labels = {j.hash: j.label for j in record.jobs}
    for job, rel in record.figures.items():
        uri = _figure_uri(run, rel)
        if uri:
            charts.append((f"Sample predictions: {labels.get(job, job)}", uri))
    return charts


def render_html(record: EvaluationRecord, run: Path, rec: Recommendation) -> str:
    """The report as one HTML string (autoescaped; every figure a data: URI)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(
        loader=PackageLoader("matseg.report", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    labels = {j.hash: j.label for j in record.jobs}
    qc_figures = [
        (f"Output QC: {labels.get(q.job, q.job)}", uri)
        for q in record.quality
        if (uri := _figure_uri(run, q.figure))
    ]
    explain_figures = [
        (f"{e.image.rsplit('/', 1)[-1]} ({labels.get(e.job, e.job)})", uri)
        for e in record.explanations
        if (uri := _figure_uri(run, e.figure))
    ]
    tables: dict[str, Table] = {
        "best": best_table(rec),
        "grid": grid_table(record),
        "quality": quality_table(record),
        "explanations": explanation_table(record),
        "quantities": quantity_table(rec),
    }
    return env.get_template("report.html.j2").render(
        record=record,
        recommendation=rec,
        rankings={d.dataset: ranking_table(d) for d in rec.datasets},
        gaps={d.dataset: gap_words(d) for d in rec.datasets},
        halving=halving_words(record),
        plain_words=plain_words(record),
        tables=tables,
        charts=_charts(record, run, rec),
        qc_figures=qc_figures,
        explain_figures=explain_figures,
    )


def render_markdown(record: EvaluationRecord, rec: Recommendation) -> str:
    parts: list[Any] = [
        f"# matseg report: {record.run.name}\n",
        *[f"- {x}" for x in plain_words(record)],
        "",
    ]
    for warning in record.warnings:
        parts.append(f"**{warning}**\n")
    if record.missing:
        parts.append(f"This run lacks: {'; '.join(record.missing)}.\n")
    parts += ["## Recommendation\n", to_markdown(recommendation_table(rec))]
    for d in rec.datasets:
        parts += [
            f"**{d.dataset}**: use {d.use} ({d.verdict}).\n",
            f"Protocol: {d.protocol}\n",
            *[f"- {r}" for r in d.reasons],
            *[f"- {x}" for x in (d.test_estimate, gap_words(d), d.ensemble_note) if x],
            *[f"- note: {n}" for n in d.decision.notes],
            "",
            to_markdown(ranking_table(d)),
        ]
    halving = halving_words(record)
    if halving:
        parts += ["**Successive halving**\n", *[f"- {line}" for line in halving], ""]
    parts.append(f"Across contexts: {rec.contexts.summary}.\n")
    for f in rec.feedback:
        state = "ready" if f.ready else "NOT READY"
        parts += [f"Deployment feedback, {f.dataset}: {state}.", *[f"- {a}" for a in f.advice], ""]
    parts += ["## Recommended per dataset (Table 2)\n", to_markdown(best_table(rec))]
    parts += ["## Every combination (Table 3)\n", to_markdown(grid_table(record))]
    parts += ["## Microstructure quantities (recommended model, test images)\n",
              to_markdown(quantity_table(rec))]  # fmt: skip
    parts += ["## Quality control\n", to_markdown(quality_table(record))]
    parts += ["## Explanations\n", to_markdown(explanation_table(record))]
    return markdown_safe("\n".join(parts))


def build_report(run: RunDir | Path, out: Path | None = None) -> ReportFiles:
    """(Re)build the report of a run from its ``record.json`` alone (``run`` may also be a
    record file, whose folder then holds the figures it names); files into ``out``, a folder
    laid out like a run folder (default: the run itself)."""
    path = run.root if isinstance(run, RunDir) else Path(run)
    folder = RunDir(path if path.is_dir() else path.parent)
    record = read_record(path)
    target = RunDir(out) if out is not None else folder
    rec = recommend(record)
    html = write_bytes(target.report_file, render_html(record, folder.root, rec).encode("utf-8"))
    md = write_bytes(target.report_markdown, render_markdown(record, rec).encode("utf-8"))
    csvs = [
        write_bytes(target.table_file(name), to_csv(table))
        for name, table in (
            ("table3_grid", grid_table(record)),
            ("table2_best", best_table(rec)),
            ("quality_control", quality_table(record)),
            ("explanations", explanation_table(record)),
            ("recommendation", recommendation_table(rec)),
            ("quantities", quantity_table(rec)),
        )
    ]
    return ReportFiles(html, md, csvs, rec)
