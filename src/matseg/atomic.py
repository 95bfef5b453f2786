"""Atomic writes: a temporary sibling file, then a rename, so no reader sees half a file.

Every file matseg writes (specs, fingerprints, cached arrays, download state) goes through here,
so a run killed at any moment leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _umask() -> int:
    """The process's umask (only readable by setting it: set and restore at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parent folders are created). The file gets the
    mode any new file gets under the umask (0644 under 022; group-readable on a shared
    cluster filesystem), not the temporary file's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            os.fchmod(fh.fileno(), 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def write_json(path: Path, data: Any, **dump_options: Any) -> Path:
    """JSON (indented, UTF-8, trailing newline) written atomically."""
    options: dict[str, Any] = {"indent": 2, **dump_options}
    return write_bytes(path, (json.dumps(data, **options) + "\n").encode("utf-8"))


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN and infinity (nested in dicts and lists) as None: JSON has none."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    return value


def write_npy(path: Path, array: np.ndarray) -> Path:
    """A NumPy array as ``.npy`` (no pickles) written atomically."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return write_bytes(path, buf.getvalue())


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else round(value, 6)
    return "" if value is None else value


def table_csv_bytes(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    """A header and rows of cells as CSV (UTF-8), NaN and None as empty cells, floats rounded
    to 6 decimals; a header may repeat a name (a report table's two "IoU" columns). The one CSV
    writer of matseg."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    if header:
        writer.writerow(header)
    writer.writerows([_cell(value) for value in row] for row in rows)
    return buf.getvalue().encode("utf-8")


def csv_bytes(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> bytes:
    """Rows (dicts) as CSV: the given columns (default: the first row's keys; a missing key is
    an empty cell, an extra one is left out), through :func:`table_csv_bytes`."""
    fields = list(columns) if columns is not None else (list(rows[0]) if rows else [])
    return table_csv_bytes(fields, [[row.get(k) for k in fields] for row in rows])


def write_csv(
    path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None
) -> Path:
    """:func:`csv_bytes` written atomically."""
    return write_bytes(path, csv_bytes(rows, columns))
