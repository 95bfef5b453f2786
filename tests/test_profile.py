"""Profiles validate with readable errors, compile into stable plans; init and schema work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from matseg.cli import app
from matseg.errors import SpecError
from matseg.plan import compile_plan
from matseg.profile import (
    Profile,
    load_profile,
    profile_json_schema,
    profile_problems,
    starting_profile,
)

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    return path


def _synthetic_spec(tmp_path: Path) -> Path:
    from matseg.datasets.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path / "data", n_images=8, size=32, seed=0)


def test_defaults_are_the_paper_protocol() -> None:
    p = Profile.model_validate({"name": "x", "datasets": ["a.json"]})
    t = p.training
    assert (t.batch_size, t.learning_rate, t.scheduler, t.patience) == (16, 1e-4, "cosine", 20)
    assert p.model.weights == "imagenet"
    assert p.model.encoders == ["resnet50", "se_resnext101_32x4d"]
    assert p.model.decoders == ["unet", "deeplabv3", "deeplabv3plus"]


def test_every_error_is_listed_with_its_field_path() -> None:
    problems = profile_problems(
        {
            "name": "bad name!",
            "datasets": [],
            "training": {"batch_size": 0, "patch_size": 100, "optimiser": "sgd"},
            "task": {"difficulty": "Impossible"},
        }
    )
    text = "\n".join(problems)
    for field in ("name", "datasets", "training.batch_size", "training.patch_size",
                  "training.optimiser", "task.difficulty"):  # fmt: skip
        assert f"{field}:" in text, (field, text)
    assert any("multiple of 32" in p for p in problems)
    assert all("expected" in p and "found" in p for p in problems)


def test_comments_are_allowed_everywhere_and_init_profile_is_valid(tmp_path: Path) -> None:
    data = starting_profile()
    assert "$comment" in data and "$comment" in data["training"]
    assert profile_problems(data) == []


def test_load_resolves_dataset_paths_relative_to_the_profile(tmp_path: Path) -> None:
    spec = _synthetic_spec(tmp_path)
    path = _write(
        tmp_path, {"name": "p", "datasets": ["data/dataset.json"], "training": {"patch_size": 32}}
    )
    profile = load_profile(path)
    plan = compile_plan(profile)
    assert plan.jobs[0].spec.root == str(spec.parent.resolve())


def test_load_resolves_qc_scenarios_relative_to_the_profile(tmp_path: Path) -> None:
    _synthetic_spec(tmp_path)
    data = {"name": "p", "datasets": ["data/dataset.json"],
            "qc": {"scenarios": ["data/dataset.json", "/abs/folder"]}}  # fmt: skip
    profile = load_profile(_write(tmp_path, data))
    assert profile.qc.scenarios == [str(tmp_path / "data" / "dataset.json"), "/abs/folder"]


def test_plan_is_the_cartesian_product_with_stable_hashes(tmp_path: Path) -> None:
    _synthetic_spec(tmp_path)
    data = {
        "name": "p",
        "datasets": ["data/dataset.json"],
        "model": {
            "encoders": ["resnet18", "resnet34"],
            "decoders": ["UNet", "DeepLabV3+"],
            "weights": "none",
        },
        "training": {"seeds": [0, 1], "patch_size": 32},
        "evaluation": {"protocol": "holdout"},
    }
    plan = compile_plan(load_profile(_write(tmp_path, data)))
    assert len(plan.jobs) == 2 * 2 * 2
    assert [j.decoder for j in plan.jobs[:4]] == ["unet", "unet", "deeplabv3plus", "deeplabv3plus"]
    assert len({j.hash for j in plan.jobs}) == 8
    again = compile_plan(load_profile(_write(tmp_path, data)))
    assert [j.hash for j in plan.jobs] == [j.hash for j in again.jobs]
    data["training"]["learning_rate"] = 3e-4
    changed = compile_plan(load_profile(_write(tmp_path, data)))
    assert not {j.hash for j in plan.jobs} & {j.hash for j in changed.jobs}
    data["training"]["accelerator"] = "cpu"  # where, not what: same jobs, same run folder
    moved = compile_plan(load_profile(_write(tmp_path, data)))
    assert [j.hash for j in moved.jobs] == [j.hash for j in changed.jobs]
    assert moved.profile_hash == changed.profile_hash
    assert moved.jobs[0].training.accelerator == "cpu"


def test_the_run_folder_is_named_by_what_decides_its_results(tmp_path: Path) -> None:
    """Settings at their defaults (as a field a later matseg adds would be) and decision settings
    leave the name as it was; quality control or other jobs change it; a folder an earlier
    matseg named is found again."""
    from matseg.rundir import RunDir

    _synthetic_spec(tmp_path)
    data = {
        "name": "p",
        "datasets": ["data/dataset.json"],
        "model": {"encoders": ["resnet18"], "decoders": ["unet"], "weights": "none"},
        "training": {"patch_size": 32},
    }
    plan = compile_plan(load_profile(_write(tmp_path, data)))
    data["evaluation"] = {"folds": 5, "tie_margin": 0.01, "search": "grid"}  # the defaults
    data["qc"] = {}
    data["description"] = "a note"
    stated = compile_plan(load_profile(_write(tmp_path, data)))
    assert stated.profile_hash == plan.profile_hash
    data["evaluation"]["tie_margin"] = 0.02  # same jobs, another decision: the same folder
    data["task"] = {"target": "area_fraction:class_1"}
    decided = compile_plan(load_profile(_write(tmp_path, data)))
    assert decided.profile_hash == plan.profile_hash
    data["qc"] = {"ready_auroc": 0.9}  # another quality control: another folder
    margin = compile_plan(load_profile(_write(tmp_path, data)))
    assert [j.hash for j in margin.jobs] == [j.hash for j in plan.jobs]
    assert margin.profile_hash != plan.profile_hash
    data["evaluation"]["folds"] = 3  # other jobs: another folder
    assert compile_plan(load_profile(_write(tmp_path, data))).profile_hash != margin.profile_hash
    # a folder of this run under another name (an earlier matseg hashed the whole profile)
    old = RunDir(tmp_path / "runs" / "p-0123abcd")
    old.root.mkdir(parents=True)
    old.write_plan(plan.model_copy(update={"profile_hash": "0123abcd0000"}))
    old.profile_file.write_text(json.dumps({**data, "qc": {}, "evaluation": {}}))
    assert RunDir.for_plan(tmp_path / "runs", plan).root == old.root
    assert RunDir.for_plan(tmp_path / "runs", margin).root.name == f"p-{margin.profile_hash[:8]}"
    old.profile_file.write_text("{")  # damaged: not taken for this run
    assert RunDir.for_plan(tmp_path / "runs", plan).root.name == f"p-{plan.profile_hash[:8]}"


def test_unknown_key_and_missing_dataset_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"training\.epochs"):
        load_profile(
            _write(tmp_path, {"name": "p", "datasets": ["x.json"], "training": {"epochs": 3}})
        )
    profile = load_profile(_write(tmp_path, {"name": "p", "datasets": ["missing.json"]}))
    with pytest.raises(SpecError, match=r"missing\.json"):
        compile_plan(profile)


def test_cli_profile_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    path = tmp_path / "start.json"
    got = runner.invoke(
        app, ["profile", "init", str(path), "--dataset", str(ROOT / "examples" / "nasa-super.json")]
    )
    assert got.exit_code == 0 and path.exists()
    assert runner.invoke(app, ["profile", "init", str(path)]).exit_code == 2  # no silent overwrite
    bad = _write(
        tmp_path, {"name": "p", "datasets": ["x.json"], "training": {"batch_size": -1, "lr": 1}}
    )
    got = runner.invoke(app, ["profile", "validate", str(bad)])
    assert got.exit_code == 1
    assert "training.batch_size" in got.output and "training.lr" in got.output
    schema = json.loads(runner.invoke(app, ["profile", "schema"]).stdout)
    assert schema == profile_json_schema()
    committed = ROOT / "docs" / "profile.schema.json"
    assert json.loads(committed.read_text()) == schema, (
        "run: matseg profile schema > docs/profile.schema.json"
    )


def test_cli_plan_json(tmp_path: Path) -> None:
    _synthetic_spec(tmp_path)
    path = _write(
        tmp_path,
        {
            "name": "p",
            "datasets": ["data/dataset.json"],
            "model": {"encoders": ["resnet18"], "decoders": ["unet", "fpn"], "weights": "none"},
            "training": {"patch_size": 32},
            "evaluation": {"folds": 2},
        },
    )
    got = CliRunner().invoke(app, ["plan", str(path), "--json"])
    assert got.exit_code == 0, got.output
    plan = json.loads(got.stdout)
    assert [j["decoder"] for j in plan["jobs"]] == ["unet", "unet", "fpn", "fpn"]
    assert [j["fold"]["index"] for j in plan["jobs"]] == [0, 1, 0, 1]


@pytest.mark.parametrize(
    "path", sorted((ROOT / "examples" / "profiles").glob("*.json")), ids=lambda p: p.stem
)
def test_example_profiles_validate_and_plan(path: Path) -> None:
    data = json.loads(path.read_text())
    assert profile_problems(data) == []
    profile = load_profile(path)
    specs = [ROOT / "examples" / Path(d).name for d in profile.datasets if isinstance(d, str)]
    assert all(s.is_file() for s in specs)
    if (ROOT.parent / "shared" / "data").is_dir():
        plan = compile_plan(profile)
        assert (
            len(plan.jobs)
            == len(specs)
            * len(profile.model.encoders)
            * len(profile.model.decoders)
            * len(profile.training.seeds)
            * profile.evaluation.folds
            * profile.evaluation.repeats
        )


def test_the_evaluation_block_refuses_settings_it_would_ignore() -> None:
    from matseg.profile import Evaluation

    assert Evaluation().protocol == "cv" and Evaluation().folds == 5  # new profiles: 5-fold CV
    with pytest.raises(ValueError, match="folds apply to protocol 'cv'"):
        Evaluation(protocol="holdout", folds=3)
    with pytest.raises(ValueError, match="test 'none' needs protocol 'cv'"):
        Evaluation(protocol="holdout", test="none")
    with pytest.raises(ValueError, match="rungs apply to search 'halving'"):
        Evaluation(rungs=4)
    Evaluation(protocol="holdout", folds=5)  # the defaults, as a saved profile writes them
    halving = Evaluation(search="halving", halving_rate=3, rungs=3)
    assert halving.rung_epochs(30) == [4, 10, 30] and halving.rung_epochs(2) == [1, 1, 2]
    assert profile_problems({"name": "p", "datasets": ["x"], "evaluation": {"folds": 1}})
