"""Discovery: a spec -> the list of (image, mask) items, and every problem met on the way.

Files are listed, paired by stem (with the spec's suffix / replacements), volumes are cut into
slices and frame folders into frames, each item remembering the micrograph, volume or sequence
it comes from (its *group*), so splits can keep them together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from matseg.datasets.masks import PolygonIndex, load_polygon_index
from matseg.datasets.readers import SIDECAR_EXTENSIONS, is_supported, probe_shape
from matseg.datasets.spec import POLYGON_ENCODINGS, DatasetSpec
from matseg.errors import DataError, SpecError


@dataclass(frozen=True)
class Problem:
    """One thing wrong (``error``: the dataset is not usable as it is) or worth knowing."""

    level: Literal["error", "warning", "note"]
    where: str
    message: str

    def line(self) -> str:
        return f"{self.level}: {self.where}: {self.message}"


@dataclass(frozen=True)
class Item:
    """One 2D sample to be: an image file (or one slice / frame of it) and where its mask is."""

    image: Path
    mask: Path | None
    key: str  # unique, readable id: the stem, plus '#z012' for a slice
    group: str  # micrograph / volume / sequence the item belongs to
    index: int | None = None  # slice or frame index inside the container
    container: str | None = None  # volume or sequence name
    folder: str = ""  # parent folder relative to the image location (for folder splits)


@dataclass
class Discovery:
    """What discovery found: paired items, leftovers and problems."""

    items: list[Item] = field(default_factory=list)
    unpaired_images: list[Path] = field(default_factory=list)
    unpaired_masks: list[Path] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    polygons: PolygonIndex | None = None  # read once here, reused by the loader


_GLOB_CHARS = re.compile(r"[*?\[]")


def list_files(spec: DatasetSpec, location: str, problems: list[Problem]) -> list[Path]:
    """Files named by a folder or a glob (relative to the root), sorted, images only.

    Folders are listed one level deep; with ``reader.kind == 'frames'`` each sub-folder is a
    sequence. Unsupported files are problems, documentation beside images is a note.
    """
    root = spec.root_path()
    if not root.is_dir():
        raise SpecError(f"{spec.name}: root", "an existing folder", f"'{root}'", "fix 'root'")
    if _GLOB_CHARS.search(location):
        found = sorted(p for p in root.glob(location) if p.is_file() or p.is_dir())
    else:
        folder = spec.resolve(location)
        if not folder.is_dir():
            raise SpecError(
                f"{spec.name}: '{location}'", "an existing folder or glob", f"nothing at {folder}"
            )
        found = sorted(folder.rglob("*") if spec.reader.kind != "frames" else folder.iterdir())
    files: list[Path] = []
    for path in found:
        if path.name.startswith("."):
            continue
        if spec.reader.kind == "frames" and path.is_dir():
            files.append(path)
        elif path.is_file():
            if is_supported(path):
                files.append(path)
            elif path.suffix.lower() in SIDECAR_EXTENSIONS:
                problems.append(Problem("note", str(path), "not an image; ignored"))
            else:
                problems.append(
                    Problem(
                        "error",
                        str(path),
                        f"unsupported format '{path.suffix or 'no extension'}'; convert it to "
                        "PNG or TIFF, or move it out of the dataset folder",
                    )
                )
    return files


def group_of(stem: str, pattern: str | None) -> str:
    """The micrograph a file belongs to: the regex's first group (or match), else the stem."""
    if not pattern:
        return stem
    match = re.search(pattern, stem)
    if not match:
        return stem
    return match.group(1) if match.groups() else match.group(0)


def mask_stem_for(stem: str, spec: DatasetSpec) -> str:
    """The stem a mask must have for this image stem, by the spec's pairing rule."""
    for old, new in spec.pairing.stem_replace:
        stem = stem.replace(old, new)
    return stem + spec.pairing.mask_suffix


def _by_stem(paths: list[Path], what: str, problems: list[Problem]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in paths:
        stem = path.stem
        if stem in out:
            problems.append(
                Problem(
                    "error",
                    str(path),
                    f"duplicate {what} stem '{stem}' (also {out[stem].name}); rename one",
                )
            )
            continue
        out[stem] = path
    return out


def _relative_folder(path: Path, spec: DatasetSpec, location: str) -> str:
    base = spec.root_path() if _GLOB_CHARS.search(location) else spec.resolve(location)
    try:
        rel = path.parent.relative_to(base)
    except ValueError:
        return path.parent.name
    return rel.as_posix() if str(rel) != "." else ""


def expand_file(path: Path, mask: Path | None, spec: DatasetSpec, folder: str) -> list[Item]:
    """One file -> items: itself, or one per slice (volumes) / frame (sequences)."""
    kind = spec.reader.kind
    group = group_of(path.stem, spec.split.group_pattern)
    if kind == "volume":
        shape = probe_shape(path)
        if len(shape) != 3:
            raise DataError(str(path), "a 3D volume (Z, Y, X)", f"shape {shape}", "reader.kind?")
        n = shape[spec.reader.axis]
        return [
            Item(
                path,
                mask,
                f"{path.stem}#{'zyx'[spec.reader.axis]}{i:04d}",
                group,
                i,
                path.stem,
                folder,
            )
            for i in range(0, n, spec.reader.slice_step)
        ]
    if kind == "frames":
        frames = sorted(p for p in path.iterdir() if p.is_file() and is_supported(p))
        return [
            Item(f, None, f"{path.name}#f{i:04d}", path.name, i, path.name, folder)
            for i, f in enumerate(frames[:: spec.reader.slice_step])
        ]
    key = f"{folder}/{path.stem}" if folder else path.stem  # unique across sub-folders
    return [Item(path, mask, key, group, None, None, folder)]


def discover(spec: DatasetSpec) -> Discovery:
    """List, pair and expand the files of a dataset; problems are collected, not raised."""
    result = Discovery()
    images = list_files(spec, spec.images, result.problems)
    polygon = spec.encoding is not None and spec.encoding.type in POLYGON_ENCODINGS
    annotated: set[str] | None = None
    if polygon and spec.encoding is not None:
        result.polygons = load_polygon_index(spec.encoding, spec.resolve)
        annotated = result.polygons.names()
    if spec.masks is None or polygon:
        for path in images:
            if annotated is not None and path.name not in annotated:
                result.unpaired_images.append(path)
                result.problems.append(
                    Problem("warning", str(path), "image without annotations; left out")
                )
                continue
            try:
                result.items.extend(
                    expand_file(path, None, spec, _relative_folder(path, spec, spec.images))
                )
            except DataError as exc:
                result.problems.append(Problem("error", exc.where, exc.detail()))
        return result

    masks = list_files(spec, spec.masks, result.problems)
    mask_set = set(masks)
    images = [p for p in images if p not in mask_set]  # masks may sit beside the images
    image_by_stem = _by_stem(images, "image", result.problems)
    mask_by_stem = _by_stem(masks, "mask", result.problems)
    used: set[str] = set()
    for stem, path in image_by_stem.items():
        mask = mask_by_stem.get(mask_stem_for(stem, spec))
        if mask is None:
            result.unpaired_images.append(path)
            continue
        used.add(mask.stem)
        try:
            result.items.extend(
                expand_file(path, mask, spec, _relative_folder(path, spec, spec.images))
            )
        except DataError as exc:
            result.problems.append(Problem("error", exc.where, exc.detail()))
    result.unpaired_masks = [p for s, p in mask_by_stem.items() if s not in used]
    for path in result.unpaired_images:
        result.problems.append(
            Problem(
                "warning",
                str(path),
                f"image without a mask (looked for '{mask_stem_for(path.stem, spec)}.*')",
            )
        )
    for path in result.unpaired_masks:
        result.problems.append(Problem("warning", str(path), "mask without an image"))
    return result
