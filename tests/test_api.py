"""The public API's smaller seams: datasets you can plot, profile fields that take effect."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import matseg
from matseg.errors import DataError, SpecError
from matseg.profile import load_profile, profile_problems

if TYPE_CHECKING:
    from conftest import DataMaker


def test_the_public_api_is_small_and_lazy() -> None:
    assert {"run", "Run", "load_profile", "load_dataset", "TypicalityQC", "predict"} <= set(
        matseg.__all__
    )
    assert len(matseg.__all__) <= 16
    assert callable(matseg.run) and matseg.Run.open.__doc__
    with pytest.raises(AttributeError):
        _ = matseg.no_such_name


def test_a_dataset_plots_before_any_training(data_maker: DataMaker) -> None:
    data_maker.good(4)
    data = matseg.load_dataset(data_maker.spec())
    assert len(data) == 4 and data.classes == ["background", "foreground"]
    figure = data.plot(0)
    image_ax, mask_ax, overlay_ax = figure.axes
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert legend == ["0: background", "1: foreground"]
    assert data[0].meta.key in image_ax.get_title()
    assert mask_ax.get_images() and len(overlay_ax.get_images()) == 2


def test_an_unusable_dataset_is_one_line(data_maker: DataMaker) -> None:
    data_maker.image("lonely.png")
    with pytest.raises(DataError, match="usable dataset"):
        matseg.load_dataset(data_maker.spec())


def test_fields_that_nothing_read_are_gone_or_work() -> None:
    base = {"name": "p", "datasets": ["d.json"]}
    assert profile_problems({**base, "task": {"qc_signals": []}}) == []  # as 0.1 wrote it
    (problem,) = profile_problems({**base, "task": {"qc_signals": ["typicality"]}})
    assert "qc_signals was removed" in problem
    assert profile_problems({**base, "explain": {"enabled": True, "roi": "0,0,8,8"}}) == []
    assert profile_problems({**base, "explain": {"roi": "centre"}})


def test_explain_enabled_and_task_metrics_take_effect(tmp_path: Path) -> None:
    from matseg.datasets.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "data", kind="particles", n_images=12, size=64, seed=1)
    (tmp_path / "p.json").write_text(json.dumps({
        "name": "p", "datasets": ["data/dataset.json"], "task": {"metrics": ["iou", "dice"]},
        "model": {"encoders": ["resnet18"], "decoders": ["unet"], "weights": "none"},
        "training": {"batch_size": 4, "max_epochs": 1, "patch_size": 64},
        "evaluation": {"protocol": "holdout"},
        "explain": {"enabled": True, "roi": "16,16,48,48", "window": 16, "stride": 16},
    }))  # fmt: skip
    run = matseg.run(load_profile(tmp_path / "p.json"), tmp_path / "runs", progress_bar=False)
    (heat,) = run.record.explanations
    assert heat.job == run.best().hash and heat.roi == "16,16,48,48" and heat.window == 16
    assert (run.path / heat.heatmap).is_file()
    markdown = run.folder.report_markdown.read_text()
    grid = markdown.split("## Every combination")[1].splitlines()
    header = next(line for line in grid if line.startswith("| dataset"))
    assert "Dice" in header and "wIoU" not in header and "pixel acc." not in header
    again = matseg.run(load_profile(tmp_path / "p.json"), tmp_path / "runs", resume=True,
                       progress_bar=False)  # fmt: skip
    assert again.trained == [] and len(again.record.explanations) == 1  # kept, not redone


def test_run_open_refuses_what_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"plan\.json"):
        matseg.Run.open(tmp_path)
