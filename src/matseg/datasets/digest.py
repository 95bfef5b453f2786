"""A digest of a dataset's files: what a job's hash takes from the data instead of its location.

A job's result depends on the bytes of its images, masks and annotation files, not on where they
are mounted. The digest is the sha256 of the sorted (name relative to the root, size, content
sha256) of every file the spec reads, so a run moved with its data to another machine, or resumed
on a cluster node that mounts the data elsewhere, finds its finished jobs. Content hashes are
cached per file (by absolute path, size and modification time) under the matseg cache, so only
new or changed files are read again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from matseg.atomic import write_json
from matseg.datasets.catalog import default_cache_dir
from matseg.datasets.discover import discover
from matseg.datasets.spec import DatasetSpec

CACHE_NAME = "file-digests.json"
_CHUNK = 1 << 20


def spec_files(spec: DatasetSpec) -> list[Path]:
    """Every file the spec reads: paired images and masks, annotation files, the manifest."""
    found = discover(spec)
    files = {item.image for item in found.items}
    files |= {item.mask for item in found.items if item.mask is not None}
    encoding = spec.encoding
    files |= {spec.resolve(a) for a in getattr(encoding, "annotations", None) or []}
    files |= {spec.resolve(s.file) for s in getattr(encoding, "sources", None) or []}
    if spec.split.manifest:
        files.add(spec.resolve(spec.split.manifest))
    return sorted(p for p in files if p.is_file())


@dataclass
class FileDigests:
    """sha256 of files, remembered by (absolute path, size, mtime) in one JSON cache file."""

    cache_file: Path | None

    def __post_init__(self) -> None:
        self.known: dict[str, list[object]] = {}
        self.changed = False
        if self.cache_file is not None and self.cache_file.is_file():
            try:
                loaded = json.loads(self.cache_file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                loaded = {}  # a damaged cache is only a cache: rebuild it
            self.known = loaded if isinstance(loaded, dict) else {}

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key = str(path.resolve())
        entry = self.known.get(key)
        if entry and entry[:2] == [st.st_size, st.st_mtime_ns]:
            return str(entry[2])
        h = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
        self.known[key] = [st.st_size, st.st_mtime_ns, h.hexdigest()]
        self.changed = True
        return h.hexdigest()

    def save(self) -> None:
        if self.changed and self.cache_file is not None:
            # a read-only cache folder costs time on the next run, never a result
            with contextlib.suppress(OSError):
                write_json(self.cache_file, self.known, indent=None)
            self.changed = False


def _name(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:  # a file named outside the root (an absolute annotation path)
        return path.name


def data_digest(spec: DatasetSpec, cache_dir: Path | None = None) -> str:
    """sha256 over (relative name, size, content sha256) of every file the spec reads."""
    folder = cache_dir if cache_dir is not None else default_cache_dir()
    digests = FileDigests(folder / CACHE_NAME)
    root = spec.root_path()
    h = hashlib.sha256()
    for path in spec_files(spec):
        h.update(f"{_name(path, root)}\0{path.stat().st_size}\0{digests.sha256(path)}\n".encode())
    digests.save()
    return h.hexdigest()
