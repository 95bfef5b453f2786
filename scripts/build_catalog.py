"""Regenerate ``src/matseg/datasets/catalog/public.json`` from a local copy of the public datasets.

The hand-written part of the catalog (titles, licences, citations, upstream repositories and how
each local file maps to its upstream path) lives in this script, transcribed from each dataset's
SOURCE.md; the measured part (every file's size and sha256) is computed from the folders under
``--data`` (default: ``$MATSEG_SHARED_DATA`` or ``../shared/data`` beside the repository).

Usage::

    python scripts/build_catalog.py                 # rewrite public.json
    python scripts/build_catalog.py --check         # exit 1 if public.json is out of date
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "src" / "matseg" / "datasets" / "catalog" / "public.json"
SCHEMA_VERSION = 1

NASA_REPO = "https://github.com/nasa/pretrained-microscopy-models"
NASA_COMMIT = "f50b5689a71cf6f86016fb4a5c5a2bb31e0397f3"
NASA_MELTPOOL_COMMIT = "f50b5689"
NRCAN_REPO = "https://github.com/Jon-GSC/SEM_segmentation"
NRCAN_COMMIT = "59ca4d6f841f866eb7eb5b147953acd2256dca92"
TBM_REPO = "https://github.com/Scientific-Computing-Lab/MLOgraphyPlusPlus"
TBM_COMMIT = "f24b8ea4"
AMPIS_REPO = "https://github.com/rccohn/AMPIS"
AMPIS_COMMIT = "fd822b1b"

ABBREVIATED_NOTE = (
    "SOURCE.md gives only the abbreviated commit {commit}; it is recorded as given and the raw "
    "URLs use it unexpanded (GitHub resolves unambiguous short SHAs; the sha256 of every file "
    "is checked after download either way)."
)

UpstreamFn = Callable[[str, Path], str | None]
"""Maps a file's path inside the dataset folder to its path upstream (None: not from upstream)."""


def raw_url(repo: str, commit: str, upstream_path: str) -> str:
    """A raw.githubusercontent.com URL for ``upstream_path`` at ``commit``, URL-quoted."""
    owner_name = repo.removeprefix("https://github.com/")
    return (
        f"https://raw.githubusercontent.com/{owner_name}/{commit}/{quote(upstream_path, safe='/')}"
    )


def nasa_super_upstream(rel: str, folder: Path) -> str | None:
    """Per-file upstream paths come from manifest.json (img_src / mask_src)."""
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    mapping = {}
    for item in manifest:
        mapping[item["img"]] = item["img_src"]
        mapping[item["mask"]] = item["mask_src"]
    return mapping.get(rel)


def nasa_meltpool_upstream(rel: str, folder: Path) -> str | None:
    """images/<split>/X.png and annotations/X.json live under instance_segmentation/data/."""
    parts = rel.split("/")
    if parts[0] == "images" and len(parts) == 3:
        return f"instance_segmentation/data/{parts[1]}/{parts[2]}"
    if parts[0] == "annotations" and len(parts) == 2:
        return f"instance_segmentation/data/annotations/{parts[1]}"
    return None


def nrcan_upstream(rel: str, folder: Path) -> str | None:
    """images/ and masks/ are TrainData/Images and TrainData/Masks; LICENSE is the repo's."""
    parts = rel.split("/")
    base = "forWeb_SEM/All_images/TrainData"
    if parts[0] == "images" and len(parts) == 2:
        return f"{base}/Images/{parts[1]}"
    if parts[0] == "masks" and len(parts) == 2:
        return f"{base}/Masks/{parts[1]}"
    if rel == "LICENSE":
        return "LICENSE"
    return None


def tbm_upstream(rel: str, folder: Path) -> str | None:
    """Local train_/test_ name prefixes are upstream Train/TestDataset folders, unprefixed."""
    parts = rel.split("/")
    if parts[0] in ("images", "masks") and len(parts) == 2:
        split, _, stem = parts[1].partition("_")
        split_dir = {"train": "TrainDataset", "test": "TestDataset"}.get(split)
        if split_dir is not None:
            return f"AutoSAM/TBM_dataset/{split_dir}/{parts[0]}/{stem}"
    return None


def ampis_upstream(rel: str, folder: Path) -> str | None:
    """images/ = images_png/, annotations_via/ = via_2.0.8/, README_source.txt = README."""
    parts = rel.split("/")
    base = "examples/powder/data"
    if parts[0] == "images" and len(parts) == 2:
        return f"{base}/images_png/{parts[1]}"
    if parts[0] == "annotations_via" and len(parts) == 2:
        return f"{base}/via_2.0.8/{parts[1]}"
    if rel == "README_source.txt":
        return f"{base}/images_png/README"
    return None


def xct_upstream(rel: str, folder: Path) -> str | None:
    """The volumes are qim3d/examples/<name> inside the qim3d 1.5.3 wheel (no per-file URL)."""
    return f"qim3d/examples/{rel}" if rel.endswith(".tif") else None


# The hand-written metadata, one dict per dataset folder, transcribed from its SOURCE.md.
DATASETS: list[dict[str, Any]] = [
    {
        "name": "nasa_super",
        "title": "NASA Ni-based superalloy SEM, gamma-prime precipitates (Super1-4)",
        "modality": "SEM",
        "material": "Ni-based superalloy",
        "task": "semantic segmentation, 3 classes (matrix, secondary and tertiary gamma-prime)",
        "description": (
            "23 unique 512x512 SEM image/mask pairs from NASA's Super1-4 benchmark splits "
            "(deduplicated; manifest.json keeps each file's original split). Images are RGB TIFF "
            "(21 uint8, 2 uint16). Masks are RGBA TIFF overlays: pure red and pure blue mark the "
            "two precipitate classes, every other pixel is matrix; uint16 masks use 65535. The "
            "'different_test' images come from other alloys and imaging conditions (a real "
            "distribution shift)."
        ),
        "licence": "MIT",
        "licence_note": "Repository README: all data in the repository are MIT-licensed.",
        "citation": "Stuckner et al., npj Comput Mater 8, 200 (2022) (MicroNet).",
        "source": {
            "repository": NASA_REPO,
            "commit": NASA_COMMIT,
            "commit_abbreviated": False,
            "urls": [f"{NASA_REPO}/tree/{NASA_COMMIT}/benchmark_segmentation_data"],
            "note": "Per-file upstream paths from manifest.json (img_src / mask_src).",
        },
        "upstream": nasa_super_upstream,
    },
    {
        "name": "nrcan_shale_sem",
        "title": "Duvernay shale SEM tiles (Natural Resources Canada)",
        "modality": "SEM",
        "material": "Duvernay shale",
        "task": "binary semantic segmentation",
        "description": (
            "101 pairs of 256x256 uint8 greyscale SEM TIFF tiles; masks are uint8 TIFF with "
            "values {0, 255}, 255 = foreground ('grain coverage'). Coarse polygon-style labels; "
            "24 masks are all foreground. Mask name = image name with 'run1_' -> 'run1_MASK_'."
        ),
        "licence": "MIT",
        "licence_note": (
            "Crown Copyright, Government of Canada. The README says the MIT licence covers 'the "
            "source code of this project'; the sample data are committed in the same repository."
        ),
        "citation": "Chen et al., Computers & Geosciences 138, 104450 (2020).",
        "source": {
            "repository": NRCAN_REPO,
            "commit": NRCAN_COMMIT,
            "commit_abbreviated": False,
            "urls": [f"{NRCAN_REPO}/tree/{NRCAN_COMMIT}/forWeb_SEM/All_images/TrainData"],
            "note": "images/ = TrainData/Images, masks/ = TrainData/Masks.",
        },
        "upstream": nrcan_upstream,
    },
    {
        "name": "tbm_grain_256",
        "title": "TBM grain boundaries, 256x256 tiles (AutoSAM train/test split)",
        "modality": "Optical",
        "material": "metallographic grain structure (optical metallography)",
        "task": "binary segmentation of thin grain boundaries",
        "description": (
            "80 pairs (64 train_*, 16 test_*) of 256x256 RGB PNG images; masks are 256x256 uint8 "
            "PNG with the boundary bright (255) and anti-aliased: binarise at >= 128."
        ),
        "licence": "MIT",
        "licence_note": (
            "Licence of the MLOgraphyPlusPlus repository; the licence of the original TBM data "
            "(Zenodo record 8386997) is unverified."
        ),
        "citation": None,
        "source": {
            "repository": TBM_REPO,
            "commit": TBM_COMMIT,
            "commit_abbreviated": True,
            "urls": [
                f"{TBM_REPO}/tree/{TBM_COMMIT}/AutoSAM/TBM_dataset",
                "https://zenodo.org/records/8386997",
            ],
            "note": (
                ABBREVIATED_NOTE.format(commit=TBM_COMMIT)
                + " Local names carry a train_/test_ prefix that upstream names do not."
            ),
        },
        "upstream": tbm_upstream,
    },
    {
        "name": "nasa_meltpool",
        "title": "L-PBF melt-pool boundaries, optical cross-sections (instance polygons)",
        "modality": "Optical",
        "material": "316L-type stainless steel, laser powder-bed fusion",
        "task": "instance segmentation of melt pools (COCO polygons)",
        "description": (
            "199 train + 32 validation 512x512 RGB PNG tiles of 'Slice-N{Top,Middle,Bottom}' "
            "cross-sections. Annotations are COCO JSON (train 1075, validation 187 instances), "
            "single category 'melt pool', polygon segmentation to rasterise; COCO file_name "
            "fields are './data/<split>/<name>.png' (use the basename)."
        ),
        "licence": "MIT",
        "licence_note": "Repository README: all data in the repository are MIT-licensed.",
        "citation": None,
        "source": {
            "repository": NASA_REPO,
            "commit": NASA_MELTPOOL_COMMIT,
            "commit_abbreviated": True,
            "urls": [f"{NASA_REPO}/tree/{NASA_MELTPOOL_COMMIT}/instance_segmentation/data"],
            "note": (
                ABBREVIATED_NOTE.format(commit=NASA_MELTPOOL_COMMIT)
                + f" It is a prefix of the full commit recorded for nasa_super ({NASA_COMMIT})"
                " in the same repository. An identical copy exists under"
                " examples/instance_segmentation/data."
            ),
        },
        "upstream": nasa_meltpool_upstream,
    },
    {
        "name": "ampis_powder_sem",
        "example_spec": "examples/ampis-powder-particles.json",
        "title": "Additive-manufacturing metal powder SEM (particles and satellites)",
        "modality": "SEM",
        "material": "additive-manufacturing metal powder",
        "task": "instance segmentation of particles and satellites (VIA polygons)",
        "description": (
            "11 SEM images, 1536x1024 uint8 greyscale PNG. Annotations in VGG Image Annotator "
            "(VIA 2.0.8) JSON polygons: particles (training 4 images / 1122 polygons, validation "
            "1 / 238) and satellites (training 8 / 836, validation 2 / 193); rasterise "
            "all_points_x / all_points_y."
        ),
        "licence": "MIT",
        "licence_note": (
            "AMPIS repository licence. Acknowledgement (README_source.txt): U.S. DOE-EERE AMO / "
            "ORNL-MDF at Ames Laboratory."
        ),
        "citation": None,
        "source": {
            "repository": AMPIS_REPO,
            "commit": AMPIS_COMMIT,
            "commit_abbreviated": True,
            "urls": [f"{AMPIS_REPO}/tree/{AMPIS_COMMIT}/examples/powder/data"],
            "note": (
                ABBREVIATED_NOTE.format(commit=AMPIS_COMMIT)
                + " images/ = images_png/, annotations_via/ = via_2.0.8/,"
                " README_source.txt = images_png/README."
            ),
        },
        "upstream": ampis_upstream,
    },
    {
        "name": "xct_qim3d_unlabeled",
        "title": "X-ray CT volumes from qim3d (cement, fibre composite, tubes), unlabeled",
        "modality": "XCT",
        "material": "cement paste, fibre composite, tube-like structures",
        "task": "none (unlabeled): volume I/O, tiled 3D inference, distribution shift for QC",
        "description": (
            "Three uint8 TIFF stacks (axis order z, y, x): cement_128x128x128.tif (cement paste "
            "with round pores), fibers_150x150x150.tif (fibre composite), NT_128x128x128.tif "
            "(hollow tube-like structures). No ground-truth masks exist."
        ),
        "licence": "MIT",
        "licence_note": "qim3d package metadata: License-Expression: MIT.",
        "citation": None,
        "source": {
            "repository": "https://pypi.org/project/qim3d/1.5.3/",
            "commit": None,
            "commit_abbreviated": False,
            "version": "qim3d 1.5.3",
            "urls": ["https://pypi.org/project/qim3d/1.5.3/#files"],
            "note": (
                "QIM Center, Technical University of Denmark. The volumes are "
                "qim3d/examples/*.tif inside the qim3d 1.5.3 wheel; there is no per-file URL, "
                "so download needs base_url pointing at a mirror."
            ),
        },
        "upstream": xct_upstream,
    },
]


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def list_files(folder: Path) -> list[str]:
    """Every regular file under ``folder`` as a POSIX relative path, sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            found.append((Path(root) / name).relative_to(folder).as_posix())
    return sorted(found)


def build_entry(meta: dict[str, Any], data_root: Path) -> dict[str, Any]:
    """One catalog entry: the hand-written metadata plus measured files."""
    folder = data_root / meta["name"]
    if not folder.is_dir():
        raise SystemExit(f"{folder}: expected a dataset folder, found nothing")
    upstream: UpstreamFn = meta["upstream"]
    source = meta["source"]
    is_github = source["repository"].startswith("https://github.com/")
    files = []
    for rel in list_files(folder):
        up = upstream(rel, folder)
        url = raw_url(source["repository"], source["commit"], up) if up and is_github else None
        path = folder / rel
        files.append(
            {
                "path": rel,
                "size": path.stat().st_size,
                "sha256": sha256_of(path),
                "upstream_path": up,
                "url": url,
            }
        )
    entry = {k: v for k, v in meta.items() if k != "upstream"}
    entry["example_spec"] = meta.get(
        "example_spec", f"examples/{meta['name'].replace('_', '-')}.json"
    )
    entry["files"] = files
    return entry


def build_catalog(data_root: Path) -> dict[str, Any]:
    """The whole catalog document for the datasets under ``data_root``."""
    return {
        "schema_version": SCHEMA_VERSION,
        "note": (
            "Generated by scripts/build_catalog.py from a local copy of the datasets; file "
            "paths are relative to the dataset folder. url is null where no upstream file "
            "exists (SOURCE.md, manifests written for this collection) or none is known."
        ),
        "datasets": [build_entry(meta, data_root) for meta in DATASETS],
    }


def default_data_root() -> Path:
    """``$MATSEG_SHARED_DATA`` if set, else ``../shared/data`` beside the repository."""
    env = os.environ.get("MATSEG_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, compare) the catalog JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data_root())
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="exit 1 if --out is out of date")
    args = parser.parse_args(argv)
    text = json.dumps(build_catalog(args.data), indent=1, ensure_ascii=False) + "\n"
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out}: out of date; run python scripts/build_catalog.py", file=sys.stderr)
            return 1
        print(f"{args.out}: up to date")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(args.out)
    print(f"wrote {args.out} ({len(DATASETS)} datasets)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
