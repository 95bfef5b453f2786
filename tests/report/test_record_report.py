"""The evaluation record and the report on a real (tiny) run with QC and a heatmap."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from matseg.cli import app
from matseg.record import (
    EvaluationRecord,
    RecordError,
    read_record,
    record_json_schema,
    write_record,
)
from matseg.report import build_report
from matseg.report.compare import compare_records
from matseg.report.knowledge import (
    contexts_from_record,
    shipped_contexts,
    suggest,
    suggest_for_profile,
)
from matseg.rundir import RunDir

ROOT = Path(__file__).resolve().parents[2]
INJECTED = (
    "<script>window.__pwned = 1; document.title = 'pwned'</script> grains & <b>bold</b> "
    "<img src=x onerror=alert(1)> [click](javascript:alert(1))"
)


@pytest.fixture(scope="module")
def reported_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny run with QC, one heatmap, an injected task text, record and report."""
    from matseg.explain.run import ExplainOptions, explain_image
    from matseg.qc.pipeline import run_quality_control

    run = tmp_path_factory.mktemp("reported") / tiny_run.name
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("qc", "explain"))
    profile = json.loads((run / "profile.json").read_text())
    profile["task"]["objective"] = INJECTED
    profile["description"] = INJECTED
    (run / "profile.json").write_text(json.dumps(profile))
    run_quality_control(run)
    plan = json.loads((run / "plan.json").read_text())
    image = sorted(Path(plan["jobs"][0]["spec"]["root"], "images").iterdir())[0]
    explain_image(run, image, roi="8,8,40,40", options=ExplainOptions(window=16, stride=8))
    write_record(run)
    build_report(run)
    return run


def test_record_holds_z_q_h_and_provenance(reported_run: Path) -> None:
    record = read_record(reported_run)
    plan = json.loads((reported_run / "plan.json").read_text())
    (job,) = record.jobs
    metrics = json.loads((reported_run / "jobs" / job.hash / "metrics.json").read_text())
    test = job.evaluations["test"]
    per_image = metrics["evaluations"]["test"]["scores"]["per_image"]["macro_iou"]
    assert [i.macro_iou for i in test.images] == pytest.approx(per_image)
    assert test.macro_iou == pytest.approx(metrics["evaluations"]["test"]["scores"]["macro_iou"])
    assert all((reported_run / i.mask).is_file() for i in test.images)
    assert test.ci["macro_iou"][0] <= test.macro_iou <= test.ci["macro_iou"][1]
    assert "majority class" in test.baselines
    assert len(job.curves) == job.epochs
    (q,) = record.quality
    assert q.job == job.hash and q.detector == "knn" and not q.ready
    assert "no shift scenario" in q.reason
    (h,) = record.explanations
    assert h.roi == "8,8,40,40" and h.faithfulness_auc_ratio is not None
    assert np.load(reported_run / h.heatmap).shape == (64, 64)
    prov = record.provenance
    assert prov.profile_hash == plan["profile_hash"] and prov.seeds == [0]
    assert {"torch", "segmentation-models-pytorch", "lightning"} <= set(prov.packages)
    assert prov.git_revision is None or len(prov.git_revision.split("+")[0]) == 40
    assert record.missing == []
    (ctx,) = record.datasets
    assert ctx.objective == INJECTED and ctx.splits["test"] == test.n_images
    assert ctx.fingerprint is not None and ctx.fingerprint["n_items"] == sum(ctx.splits.values())


def test_committed_record_schema_is_current() -> None:
    committed = json.loads((ROOT / "docs" / "evaluation-record.schema.json").read_text())
    hint = "regenerate: matseg.record.dump_schema(Path('docs/evaluation-record.schema.json'))"
    assert committed == record_json_schema(), hint


def test_record_is_validated_on_read(reported_run: Path, tmp_path: Path) -> None:
    data = json.loads(RunDir(reported_run).record_file.read_text())
    data["jobs"][0]["parameters"] = "many"
    RunDir(tmp_path).record_file.write_text(json.dumps(data))
    with pytest.raises(RecordError, match=r"jobs\.0\.parameters.*'many'"):
        read_record(tmp_path)
    RunDir(tmp_path).record_file.write_text("{not json")
    with pytest.raises(RecordError, match="valid JSON"):
        read_record(tmp_path)
    with pytest.raises(RecordError, match="no such file"):
        read_record(tmp_path / "elsewhere")


def test_report_files_escape_user_text(reported_run: Path) -> None:
    html = (reported_run / "report.html").read_text()
    assert "<script" not in html.lower()
    assert "&lt;script&gt;window.__pwned" in html and "&amp; &lt;b&gt;bold" in html
    assert "Content-Security-Policy" in html and "http://" not in html and "https://" not in html
    for section in ("Recommendation", "Table 2", "Table 3", "Quality control", "Explanations"):
        assert section in html
    grid = (reported_run / "tables" / "table3_grid.csv").read_text().splitlines()
    # one job, two evaluated splits: val (the holdout decision's evidence) and test
    assert grid[0].startswith("dataset,split,encoder,decoder") and len(grid) == 3
    md = (reported_run / "report.md").read_text()
    assert "## Every combination (Table 3)" in md and "| synthetic-particles | test |" in md
    # a Markdown viewer passes raw HTML and follows links: neither survives in report.md
    assert "<script" not in md and "<img" not in md and "](javascript" not in md
    assert "Objective: &lt;script&gt;window.__pwned" in md and "&lt;img src=x onerror" in md


def test_report_renders_in_headless_chromium(reported_run: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    required = os.environ.get("MATSEG_REQUIRE_BROWSER") == "1"  # CI sets it: never skip there
    if chromium is None:
        assert not required, "MATSEG_REQUIRE_BROWSER=1 but no chromium on PATH"
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
        page.goto((reported_run / "report.html").as_uri(), wait_until="load")
        images = page.evaluate(
            "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])"
        )
        pwned = page.evaluate("window.__pwned === undefined ? null : window.__pwned")
        title = page.title()
        heading = page.inner_text("h1")
        browser.close()
    assert errors == []
    assert pwned is None and title == "matseg report: tiny" and heading == title
    assert len(images) >= 5  # 3 charts, sample predictions, output QC, the heatmap figure
    assert all(complete and width > 0 for _, complete, width in images), images


def test_report_rebuilds_from_the_record_alone(reported_run: Path, tmp_path: Path) -> None:
    shutil.copy(RunDir(reported_run).record_file, RunDir(tmp_path).record_file)
    files = build_report(RunDir(tmp_path).record_file)
    html = files.html.read_text()
    assert files.html.parent == tmp_path and "Table 3" in html
    # charts from record data (IoU, differences, quantities, curves); the run's PNGs are not here
    charts = 4 + ("Feature-size distributions" in html)  # when the model predicts particles
    assert html.count("<img") == charts
    assert "Microstructure quantities of the recommended model" in html
    quantities = (tmp_path / "tables" / "quantities.csv").read_text().splitlines()
    assert quantities[0].startswith("dataset,combination,quantity") and len(quantities) > 2
    assert any(",area_fraction:" in line for line in quantities[1:])


def test_compare_lines_up_jobs_and_shows_changes(reported_run: Path) -> None:
    a = read_record(reported_run)
    data = a.model_dump(mode="json")
    data["run"]["profile"]["training"]["learning_rate"] = 0.01
    data["jobs"][0]["evaluations"]["test"]["macro_iou"] += 0.05
    data["provenance"]["packages"]["torch"] = "0.0"
    b = EvaluationRecord.model_validate(data)
    diff = compare_records(a, b)
    assert ("training.learning_rate", a.run.profile["training"]["learning_rate"], 0.01) in (
        diff.profile_changes
    )
    assert any(k == "packages.torch" for k, _, _ in diff.provenance_changes)
    (change,) = [c for c in diff.scores if c.split == "test"]
    assert change.delta == pytest.approx(0.05)
    assert compare_records(a, a).scores[0].delta == 0.0
    assert compare_records(a, a).profile_changes == []


def test_knowledge_base_suggests_from_similar_contexts(reported_run: Path) -> None:
    shipped = shipped_contexts()
    assert shipped and all(c.source for c in shipped)
    afm = suggest("new-afm", "AFM", "", None, shipped)
    assert afm.drew_on[0].context.startswith("paper AFM")
    assert "same modality (AFM)" in afm.drew_on[0].why
    assert afm.combinations[0].score == pytest.approx(max(c.score for c in afm.combinations))
    assert afm.combinations[-1].decoder == "deeplabv3"  # the worst decoder on AFM there
    alloy = suggest("new-alloy", "SEM", "Inconel 718 superalloy", "Moderate", shipped)
    assert alloy.drew_on[0].context == "matseg CPU: nasa_super"
    assert "same material class (metal)" in alloy.drew_on[0].why
    mine = contexts_from_record(read_record(reported_run))
    assert mine[0].results[0].encoder == "resnet18" and mine[0].modality == "SEM"
    # a new binary SEM task with the run's foreground fraction: the run's context is the closest
    sem = suggest("new-sem", "SEM", "", None, shipped + mine, n_classes=2, foreground=0.3)
    assert sem.drew_on[0].context == mine[0].name
    assert "fingerprint close" in sem.drew_on[0].why


def test_cli_report_compare_recommend(reported_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(reported_run)])
    assert res.exit_code == 0, res.output
    assert "report:" in res.output and "use resnet18 + unet" in res.output
    res = runner.invoke(app, ["compare", str(reported_run), str(reported_run), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["scores"][0]["delta"] == 0.0
    profile = json.loads((reported_run / "profile.json").read_text())
    profile["datasets"] = [json.loads((reported_run / "plan.json").read_text())["jobs"][0]["spec"]]
    (tmp_path / "p.json").write_text(json.dumps(profile))
    res = runner.invoke(app, ["recommend", str(tmp_path / "p.json"), "--runs", str(reported_run),
                              "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    (s,) = json.loads(res.output)
    assert any(m["context"].startswith("tiny/") for m in s["drew_on"])  # the user's run counts
    assert any(c["encoder"] == "resnet18" for c in s["combinations"])
    res = runner.invoke(app, ["report", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "no such file" in res.output
    assert suggest_for_profile(tmp_path / "p.json", [])[0].dataset == "synthetic-particles"


def test_record_is_a_pure_read_of_the_run_folder(
    reported_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record needs nothing but the run folder: with the data gone and any inspection or
    drawing forbidden, it still holds the fingerprint written at the start, and the figures."""
    import matseg.datasets.check as check
    import matseg.plots as plots
    from matseg.record import build_record

    run = tmp_path / reported_run.name
    shutil.copytree(reported_run, run, ignore=shutil.ignore_patterns("cache"))
    plan = json.loads((run / "plan.json").read_text())
    plan["jobs"][0]["spec"]["root"] = str(tmp_path / "moved-away")
    (run / "plan.json").write_text(json.dumps(plan))

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the record must not read the data or draw")

    monkeypatch.setattr(check, "inspect_dataset", forbidden)
    monkeypatch.setattr(plots, "subplots", forbidden)
    record = build_record(run)
    (ctx,) = record.datasets
    written = json.loads(RunDir(run).fingerprint_file.read_text())[ctx.name]
    assert ctx.fingerprint == written["fingerprint"] and ctx.splits == written["splits"]
    assert ctx.notes == [] and ctx.leakage_warnings == []
    assert list(record.figures) == [record.jobs[0].hash]  # drawn by the job, read here
    assert record.jobs[0].evaluations["test"].macro_iou is not None  # the metrics are kept
