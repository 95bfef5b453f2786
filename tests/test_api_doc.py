"""docs/api.md is a notebook: its Python blocks run in order, in one namespace, here."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_the_walkthrough_has_code() -> None:
    assert len(blocks()) >= 6


@pytest.mark.slow
def test_the_walkthrough_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    namespace: dict[str, object] = {"__name__": "notebook"}
    for n, code in enumerate(blocks(), 1):
        try:
            exec(compile(code, f"{DOC.name} block {n}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"{DOC.name}, code block {n} failed: {exc!r}") from exc
    run = namespace["run"]
    assert (tmp_path / "matseg-notebook" / "sample.png").stat().st_size > 1000
    assert run.report_path.is_file()  # type: ignore[attr-defined]
    assert os.path.isfile(tmp_path / "matseg-notebook" / "predicted" / "mosaic_mask.png")
