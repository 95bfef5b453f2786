"""``load_dataset``: a spec file, a spec, or a folder with images/ and masks/ -> a dataset you
can index, split and plot, before any training (torchgeo's convention)."""

from __future__ import annotations

from pathlib import Path

from matseg.datasets.check import DatasetReport, Inspection, inspect_dataset, report
from matseg.datasets.dataset import MicrographDataset
from matseg.datasets.infer import spec_for_folder
from matseg.datasets.spec import DatasetSpec, load_spec
from matseg.errors import DataError


def load_dataset(
    source: DatasetSpec | Path | str, cache_dir: Path | None = None
) -> MicrographDataset:
    """The dataset a spec describes (a folder's encoding is inferred), inspected once; an
    unusable dataset is a one-line error naming its first problem (``matseg datasets check``
    lists them all)."""
    if isinstance(source, DatasetSpec):
        spec = source
    else:
        path = Path(source)
        spec = spec_for_folder(path) if path.is_dir() else load_spec(path)
    ins, _ = usable_inspection(spec, cache_dir)
    return ins.dataset(cache_dir)


def usable_inspection(
    spec: DatasetSpec, cache_dir: Path | None = None
) -> tuple[Inspection, DatasetReport]:
    """The inspection of a dataset and its report; a dataset that is not usable is a one-line
    error with its error count and first problem."""
    ins = inspect_dataset(spec, cache_dir=cache_dir)
    rep = report(ins)
    if not rep.usable:
        errors = [p for p in rep.problems if p.level == "error"]
        first = errors[0] if errors else None
        raise DataError(
            f"dataset {spec.name}",
            "a usable dataset (matseg datasets check)",
            f"{len(errors)} errors, first: {first.where}: {first.message}" if first else "no items",
        )
    return ins, rep
