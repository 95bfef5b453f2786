"""The ``matseg`` command line, driven through Typer's CliRunner (no subprocess, no network)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from click.testing import Result
from typer.testing import CliRunner

from matseg.cli import app
from matseg.datasets.catalog import load_catalog

if TYPE_CHECKING:
    from conftest import DataMaker

Invoke = Callable[..., Result]

CATALOG = [entry.name for entry in load_catalog()]  # test_catalog checks the six names


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Invoke:
    """Invoke the app with a wide terminal and the download cache in tmp_path."""
    monkeypatch.setenv("MATSEG_CACHE_DIR", str(tmp_path / "cache"))
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(app, list(args), env={"COLUMNS": "250", "NO_COLOR": "1"})

    return invoke


def _no_traceback(result: Result) -> None:
    assert "Traceback" not in result.output
    # CliRunner catches exceptions; anything other than a clean exit is a crash.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )


def test_check_good_spec_json(run: Invoke, data_maker: DataMaker) -> None:
    data_maker.good(6)
    spec = data_maker.spec_file(encoding={"type": "index"})
    result = run("datasets", "check", str(spec), "--json")
    _no_traceback(result)
    assert result.exit_code == 0, result.output
    rep = json.loads(result.stdout)
    assert {"n_pairs", "classes", "class_frequencies", "problems"} <= set(rep)
    assert rep["n_pairs"] == 6
    assert rep["classes"] == ["background", "foreground"]
    assert rep["class_frequencies"] == {"background": 0.5, "foreground": 0.5}
    assert not [p for p in rep["problems"] if p["level"] == "error"]
    assert rep["usable"] is True


def test_check_good_spec_text(run: Invoke, data_maker: DataMaker) -> None:
    data_maker.good()
    spec = data_maker.spec_file(encoding={"type": "index"})
    result = run("datasets", "check", str(spec))
    _no_traceback(result)
    assert result.exit_code == 0, result.output
    assert "verdict: usable" in result.stdout
    assert "foreground" in result.stdout


def test_check_bad_dataset_exits_1_and_lists_problems(run: Invoke, data_maker: DataMaker) -> None:
    data_maker.good()
    (data_maker.images / "zero.png").write_bytes(b"")
    data_maker.mask("zero.png")
    data_maker.image("small.png", data_maker.noise((8, 8)))
    data_maker.mask("small.png")
    (data_maker.images / "clip.gif").write_bytes(b"GIF89a")
    spec = data_maker.spec_file(encoding={"type": "index"})

    result = run("datasets", "check", str(spec), "--json")
    _no_traceback(result)
    assert result.exit_code == 1
    rep = json.loads(result.stdout)
    assert rep["usable"] is False
    errors = [p for p in rep["problems"] if p["level"] == "error"]
    for name in ("zero.png", "small.png", "clip.gif"):
        assert any(name in p["where"] for p in errors), (name, errors)

    text = run("datasets", "check", str(spec))
    _no_traceback(text)
    assert text.exit_code == 1
    assert "not usable" in text.stdout
    for name in ("zero.png", "small.png", "clip.gif"):
        assert name in text.stdout


@pytest.mark.parametrize("target", ["missing.json", "broken.json", "no_root.json", "plain_dir"])
def test_user_errors_exit_2_with_one_line(run: Invoke, tmp_path: Path, target: str) -> None:
    (tmp_path / "broken.json").write_text('{"name": "x", ')
    (tmp_path / "no_root.json").write_text(json.dumps({"name": "x", "root": "nowhere"}))
    (tmp_path / "plain_dir").mkdir()  # neither a spec nor images/ + masks/
    result = run("datasets", "check", str(tmp_path / target))
    _no_traceback(result)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    assert target in lines[0] or "nowhere" in lines[0]
    assert result.stdout == ""


def test_nonexistent_spec_message(run: Invoke, tmp_path: Path) -> None:
    result = run("datasets", "check", str(tmp_path / "nope.json"), "--json")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: {tmp_path / 'nope.json'}: expected a dataset spec JSON file, found no such "
        "file; check the path"
    )


def test_plain_folder_without_spec_infers_encoding(run: Invoke, data_maker: DataMaker) -> None:
    for i in range(4):
        mask = np.zeros((32, 32), dtype=np.uint8)
        mask[:, 10:] = 255
        data_maker.image(f"p{i}.png")
        data_maker.mask(f"p{i}.png", mask)
    result = run("datasets", "check", str(data_maker.root), "--json")
    _no_traceback(result)
    assert result.exit_code == 0, result.output
    rep = json.loads(result.stdout)
    assert rep["encoding_source"] == "inferred"
    assert rep["encoding"]["type"] == "index"
    assert rep["encoding"]["values"] == {"0": 0, "255": 1}
    assert "255" in rep["encoding_reason"]
    assert rep["n_pairs"] == 4
    assert rep["name"] == "ds"

    text = run("datasets", "check", str(data_maker.root))
    assert text.exit_code == 0
    assert "inferred" in text.stdout
    assert "255 = foreground" in text.stdout


def test_datasets_list_shows_the_catalog(run: Invoke) -> None:
    result = run("datasets", "list")
    _no_traceback(result)
    assert result.exit_code == 0
    for name in CATALOG:
        assert name in result.stdout
    assert "MIT" in result.stdout


def test_datasets_info_shows_licence(run: Invoke) -> None:
    result = run("datasets", "info", "nasa_super")
    _no_traceback(result)
    assert result.exit_code == 0
    assert "licence" in result.stdout and "MIT" in result.stdout
    assert "Stuckner" in result.stdout
    assert "examples/nasa-super.json" in result.stdout


def test_datasets_info_unknown_name(run: Invoke) -> None:
    result = run("datasets", "info", "nasa_superr")
    _no_traceback(result)
    assert result.exit_code == 2
    assert result.stderr.startswith("error:")
    assert "nasa_super" in result.stderr  # the known names are listed


def test_fingerprint_written_with_per_split_frequencies(
    run: Invoke,
    data_maker: DataMaker,
    tmp_path: Path,
) -> None:
    data_maker.good(8)
    spec = data_maker.spec_file(encoding={"type": "index"}, split={"seed": 3})
    out = tmp_path / "out" / "fingerprint.json"
    result = run("datasets", "check", str(spec), "--json", "--fingerprint", str(out))
    _no_traceback(result)
    assert result.exit_code == 0, result.output
    fp = json.loads(out.read_text())
    assert fp["name"] == "tiny"
    assert fp["n_items"] == 8
    assert fp["classes"] == ["background", "foreground"]
    assert set(fp["splits"]) == {"train", "val", "test"}
    assert sum(s["items"] for s in fp["splits"].values()) == 8
    for split in fp["splits"].values():
        freqs = split["class_frequencies"]
        assert set(freqs) == {"background", "foreground"}
        assert freqs["foreground"] == pytest.approx(0.5)
        assert len(split["channel_stats"]) == 1
    assert fp["split_method"]["seed"] == 3
    assert not list(out.parent.glob("*.tmp"))  # written atomically


def test_check_truncated_compressed_tiff_no_traceback(run: Invoke, data_maker: DataMaker) -> None:
    data_maker.good()
    data = data_maker.encoded(data_maker.noise(), ".tif", compression="zlib")
    (data_maker.images / "z.tif").write_bytes(data[: len(data) // 2])
    data_maker.mask("z.png")
    result = run("datasets", "check", str(data_maker.spec_file(encoding={"type": "index"})))
    _no_traceback(result)
    assert result.exit_code == 1
    assert "z.tif" in result.stdout


def test_committed_spec_schema_is_current() -> None:
    import json
    from pathlib import Path

    from matseg.datasets.spec import spec_json_schema

    committed = Path(__file__).resolve().parents[1] / "docs" / "dataset-spec.schema.json"
    assert json.loads(committed.read_text()) == spec_json_schema(), "run: matseg datasets schema"
    result = CliRunner().invoke(app, ["datasets", "schema"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["title"] == "DatasetSpec"


def test_demo_runs_the_quickstart_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`matseg demo` (sized down): data, check, a pretrained grid, the results table, resumable."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["demo", "--out", str(tmp_path), "--n-images", "24", "--max-epochs", "2",
            "--folds", "2"]  # fmt: skip
    got = CliRunner().invoke(app, args)
    assert got.exit_code == 0, got.output
    assert "results (Table 3)" in got.output and "trained 4, reused 0" in got.output
    assert "2-fold cross-validation of the" in got.output and ": use " in got.output
    assert "test macro IoU of" in got.output  # the honest estimate, scored once
    run = next((tmp_path / "runs").iterdir())
    rows = (run / "results.csv").read_text().splitlines()
    assert len(rows) == 5 and "tu-tf_efficientnet_lite0" in rows[1]  # 2 decoders x 2 folds
    assert all(",oof," in row for row in rows[1:])
    profile = json.loads((tmp_path / "demo-profile.json").read_text())
    assert "max_minutes" not in profile["training"]  # an epoch budget: the same on any CPU
    metrics = json.loads(next(run.glob("jobs/*/metrics.json")).read_text())
    assert metrics["weights"]["source"] == "efficientnet-lite0"
    assert (
        metrics["weights"]["encoder_tensors_loaded"]
        == metrics["weights"]["encoder_tensors_total"]
        > 0
    )
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "trained 0, reused 4" in again.output
