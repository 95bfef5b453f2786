"""Splits without leakage: seeded and group-aware, or from a manifest or folder names.

Groups (a micrograph and its tiles, a volume and its slices, a sequence and its frames) are
assigned whole, so no test pixel was seen in training. Split names other than train / val /
test (e.g. NASA's ``different_test``) are kept as named *shift sets*.
"""

from __future__ import annotations

import csv
import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from matseg.datasets.discover import Item, Problem
from matseg.datasets.spec import DatasetSpec
from matseg.errors import DataError, not_a_file, read_json

SPLITS = ("train", "val", "test")
_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}  # fmt: skip


@dataclass
class SplitResult:
    """Items per split name (train / val / test and any shift sets), plus what was left out."""

    splits: dict[str, list[Item]] = field(default_factory=dict)
    unassigned: list[Item] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, int]]:
        """Images and groups per split (what a reader checks first)."""
        return {
            name: {"items": len(items), "groups": len({i.group for i in items})}
            for name, items in self.splits.items()
        }


def canonical_split(name: str) -> str:
    """'validation' -> 'val' etc.; unknown names stay as they are (shift sets)."""
    return _ALIASES.get(name.strip().lower(), name.strip())


def random_group_split(
    items: list[Item], ratios: tuple[float, float, float], seed: int
) -> dict[str, list[Item]]:
    """Seeded group-aware split: groups are shuffled, then each goes where most items are missing.

    Greedy filling by item count keeps ratios close even when groups differ in size; a split
    with a non-zero ratio gets at least one group whenever there are enough groups.
    """
    by_group: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_group[item.group].append(item)
    names = sorted(by_group)
    order = np.random.default_rng(seed).permutation(len(names))
    total = len(items)
    targets = [r * total for r in ratios]
    out: dict[str, list[Item]] = {s: [] for s in SPLITS}
    counts = [0, 0, 0]
    wanted = [i for i, r in enumerate(ratios) if r > 0]
    for rank, idx in enumerate(order):
        group = by_group[names[idx]]
        empty = [i for i in wanted if counts[i] == 0]
        remaining = len(order) - rank
        if empty and remaining <= len(empty):
            choice = empty[0]
        else:
            choice = max(wanted, key=lambda i: (targets[i] - counts[i], -i))
        out[SPLITS[choice]].extend(group)
        counts[choice] += len(group)
    return out


def _read_manifest(path: Path, spec: DatasetSpec) -> dict[str, str]:
    """A manifest file -> {file name or stem: split name}."""
    if not path.is_file():
        raise DataError(str(path), "a split manifest", not_a_file(path), "fix split.manifest")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if (
            not rows
            or spec.split.name_field not in rows[0]
            or spec.split.split_field not in rows[0]
        ):
            raise DataError(
                str(path),
                f"CSV columns '{spec.split.name_field}', '{spec.split.split_field}'",
                "other",
            )
        return {r[spec.split.name_field]: r[spec.split.split_field] for r in rows}
    data = read_json(path, "a split manifest")
    if isinstance(data, dict):  # {split: [names]}
        return {str(n): str(s) for s, names in data.items() for n in names}
    if not isinstance(data, list):
        raise DataError(str(path), "{split: [names]} or a list of records", type(data).__name__)
    out: dict[str, str] = {}
    for record in data:
        name = record.get(spec.split.name_field)
        value = record.get(spec.split.split_field)
        if name is None or value is None:
            raise DataError(
                str(path),
                f"records with '{spec.split.name_field}' and '{spec.split.split_field}'",
                f"a record with keys {sorted(record)}",
            )
        chosen = _choose(value if isinstance(value, list) else [value], spec.split.prefer)
        if chosen is not None:
            out[str(name)] = chosen
    return out


def _choose(values: list[str], prefer: list[str]) -> str | None:
    """Pick a split among prefixed values ('Super1/train') by the spec's preference order."""
    if not prefer:
        return values[0] if values else None
    for prefix in prefer:
        for value in values:
            if value.startswith(prefix):
                return value[len(prefix) :]
    return None


def assign_splits(items: list[Item], spec: DatasetSpec) -> SplitResult:
    """Split items by the spec's method; groups never straddle splits."""
    result = SplitResult()
    method = spec.split.method
    if method == "random":
        result.splits = random_group_split(items, spec.split.ratios, spec.split.seed)
    else:
        if method == "manifest":
            table = _read_manifest(spec.resolve(spec.split.manifest or ""), spec)
            lookup = {**{Path(k).stem: v for k, v in table.items()}, **table}
        result.splits = {s: [] for s in SPLITS}
        for item in items:
            if method == "manifest":
                raw = lookup.get(item.image.name, lookup.get(item.image.stem))
            else:
                raw = item.folder.split("/")[0] if item.folder else None
            if raw is None:
                result.unassigned.append(item)
                continue
            result.splits.setdefault(canonical_split(raw), []).append(item)
        if result.unassigned:
            result.problems.append(
                Problem(
                    "warning",
                    spec.split.manifest or spec.images,
                    f"{len(result.unassigned)} items have no split "
                    f"(e.g. {result.unassigned[0].image.name}); they are left out",
                )
            )
    result.problems.extend(_straddling_groups(result.splits))
    for name in SPLITS:
        if not result.splits.get(name):
            result.problems.append(Problem("warning", f"split '{name}'", "is empty"))
    return result


def _straddling_groups(splits: dict[str, list[Item]]) -> list[Problem]:
    seen: dict[str, str] = {}
    problems = []
    for name, items in splits.items():
        for item in items:
            other = seen.setdefault(item.group, name)
            if other != name:
                problems.append(
                    Problem(
                        "warning",
                        item.key,
                        f"group '{item.group}' is in both '{other}' and '{name}' (leakage risk)",
                    )
                )
    return problems


# --- leakage check ------------------------------------------------------------------------------


def perceptual_hash(image: np.ndarray) -> np.ndarray:
    """64-bit pHash of a (C, H, W) image as a boolean vector (imagehash on the grey image)."""
    grey = image.astype(np.float64).mean(axis=0)
    lo, hi = float(grey.min()), float(grey.max())
    scaled = np.zeros_like(grey) if hi <= lo else (grey - lo) / (hi - lo) * 255.0
    return imagehash.phash(Image.fromarray(scaled.astype(np.uint8))).hash.flatten()


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (exact duplicates)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Duplicate:
    """Two items in different splits that are the same or nearly the same picture."""

    a: str
    split_a: str
    b: str
    split_b: str
    distance: int  # Hamming distance of the 64-bit pHashes (0 = same picture)
    exact: bool


def find_leaks(
    hashes: dict[str, np.ndarray],
    digests: dict[str, str],
    split_of: dict[str, str],
    max_distance: int = 6,
) -> list[Duplicate]:
    """Exact (same bytes) and near (pHash within ``max_distance`` bits) duplicates across splits."""
    keys = list(hashes)
    if not keys:
        return []
    bits = np.stack([hashes[k] for k in keys]).astype(np.uint8)
    dist = (bits[:, None, :] != bits[None, :, :]).sum(axis=-1)
    out = []
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            a, b = keys[i], keys[j]
            if split_of[a] == split_of[b]:
                continue
            exact = digests.get(a) is not None and digests.get(a) == digests.get(b)
            if exact or dist[i, j] <= max_distance:
                out.append(Duplicate(a, split_of[a], b, split_of[b], int(dist[i, j]), exact))
    return out
