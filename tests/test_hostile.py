"""The hostile-input battery (issue 17): each case here once ended in a traceback, a silent
wrong answer or a file outside its folder; now each ends in one line naming the file or field,
what was expected and what was found."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from matseg.datasets.spec import spec_from_dict
from matseg.errors import SpecError, UserError
from matseg.profile import load_profile, profile_problems

PROFILE = {"name": "p", "datasets": ["examples/nasa-super.json"]}


def _one_line(exc: UserError) -> str:
    line = exc.line()
    assert "\n" not in line and "Input should be" not in line, line
    return line


# --- numbers that JSON's parser accepts and training cannot use ------------------------------


@pytest.mark.parametrize(
    ("block", "field", "value"),
    [
        ("training", "max_minutes", float("inf")),
        ("training", "learning_rate", float("inf")),
        ("training", "learning_rate", float("nan")),
        ("evaluation", "tie_margin", float("-inf")),
        ("training", "batch_size", True),
        ("training", "max_epochs", False),
        ("qc", "accept", True),
    ],
)
def test_profile_refuses_non_finite_and_boolean_numbers(
    tmp_path: Path, block: str, field: str, value: Any
) -> None:
    data = PROFILE | {block: {field: value}}
    (problem,) = profile_problems(data)
    assert problem.startswith(f"{block}.{field}: expected a "), problem
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data))  # Python writes Infinity / NaN, and reads them back
    with pytest.raises(SpecError) as caught:
        load_profile(path)
    assert f"{block}.{field}" in _one_line(caught.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("pixel_size_um", float("inf")), ("pixel_size_um", float("nan")), ("ignore_index", True)],
)
def test_spec_refuses_non_finite_and_boolean_numbers(field: str, value: Any) -> None:
    with pytest.raises(SpecError) as caught:
        spec_from_dict({"name": "d", field: value})
    line = _one_line(caught.value)
    assert f"field '{field}'" in line and "expected a " in line


def test_validation_errors_carry_no_pydantic_wording() -> None:
    with pytest.raises(SpecError) as caught:
        spec_from_dict({"name": "d", "encodng": {}})
    assert "no such field (check its spelling)" in _one_line(caught.value)
    with pytest.raises(SpecError) as caught:
        spec_from_dict({"name": "d", "encoding": {"type": "nope"}})
    assert "expected 'type' one of 'index', 'colour'" in _one_line(caught.value)


# --- user text that would become a path ------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../../../escaped", "/tmp/absolute", "a/b", "..", ".hidden", "-rf", "a\\b", ""]
)
def test_dataset_name_is_never_a_path(name: str) -> None:
    with pytest.raises(SpecError) as caught:
        spec_from_dict({"name": name})
    assert "field 'name'" in _one_line(caught.value)


@pytest.mark.parametrize("name", ["../up", "/abs", ".hidden"])
def test_profile_name_is_never_a_path(name: str) -> None:
    (problem,) = profile_problems(PROFILE | {"name": name})
    assert problem.startswith("name: ")
