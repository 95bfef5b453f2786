"""Shared pytest fixtures, and the suite's own environment."""

from __future__ import annotations

import os

# The suite never downloads: the model hub is offline before anything imports huggingface_hub
# (it reads the switch once, at import), whatever the shell that runs pytest exports.
os.environ["HF_HUB_OFFLINE"] = "1"

import io
import json
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from PIL import Image

from matseg.datasets.spec import DatasetSpec, spec_from_dict


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every network connection attempted while the test runs (the address), so a test can
    show that a failure came before any network attempt, or after one probe: "fails fast"
    measured by what was tried, not by a wall clock that depends on the machine."""
    attempts: list[Any] = []
    connect = socket.socket.connect

    def recording(self: socket.socket, address: Any) -> Any:
        attempts.append(address)
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", recording)
    return attempts


@pytest.fixture(scope="session", autouse=True)
def _matseg_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The matseg cache (file digests, downloads) in a temporary folder for the whole session,
    so tests neither read nor write the user's ~/.cache/matseg."""
    if "MATSEG_CACHE_DIR" not in os.environ:
        os.environ["MATSEG_CACHE_DIR"] = str(tmp_path_factory.mktemp("matseg-cache"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder: ``$MATSEG_SHARED_DATA``, else ``../shared/data`` beside the repo.

    Tests that need it are skipped (with the path in the reason) when it is absent.
    """
    env = os.environ.get("MATSEG_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set MATSEG_SHARED_DATA to its location)")
    return path


class DataMaker:
    """Builds a tiny image/mask dataset under ``root`` (images/ + masks/), file by file.

    Images are seeded noise (distinct per stem, so no duplicate warnings), masks are class-id
    arrays; any file can be replaced by raw bytes to make it damaged.
    """

    size = (32, 32)

    def __init__(self, root: Path) -> None:
        self.root = root
        self.images = root / "images"
        self.masks = root / "masks"
        self.images.mkdir(parents=True, exist_ok=True)
        self.masks.mkdir(parents=True, exist_ok=True)
        self._seed = 0

    def noise(self, shape: tuple[int, ...] | None = None) -> np.ndarray:
        self._seed += 1
        rng = np.random.default_rng(self._seed)
        return rng.integers(0, 256, shape or self.size, dtype=np.uint8)

    def two_class_mask(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        h, w = shape or self.size
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[: h // 2] = 1
        return mask

    @staticmethod
    def write(path: Path, array: np.ndarray) -> Path:
        """PNG through Pillow, TIFF through tifffile, chosen by the suffix."""
        if path.suffix.lower() in (".tif", ".tiff"):
            tifffile.imwrite(path, array)
        else:
            Image.fromarray(array).save(path)
        return path

    @staticmethod
    def encoded(array: np.ndarray, ext: str, compression: str | None = None) -> bytes:
        """The bytes of ``array`` saved as PNG or TIFF (to be cut for truncation tests)."""
        buf = io.BytesIO()
        if ext in (".tif", ".tiff"):
            tifffile.imwrite(buf, array, compression=compression)
        else:
            Image.fromarray(array).save(buf, format="PNG")
        return buf.getvalue()

    def image(self, name: str, array: np.ndarray | None = None) -> Path:
        return self.write(self.images / name, self.noise() if array is None else array)

    def mask(self, name: str, array: np.ndarray | None = None) -> Path:
        return self.write(self.masks / name, self.two_class_mask() if array is None else array)

    def pair(self, stem: str, ext: str = ".png") -> tuple[Path, Path]:
        return self.image(stem + ext), self.mask(stem + ext)

    def good(self, n: int = 4) -> list[str]:
        """``n`` valid pairs named good0.. (enough groups for a 3-way split)."""
        stems = [f"good{i}" for i in range(n)]
        for stem in stems:
            self.pair(stem)
        return stems

    def spec_dict(self, **fields: Any) -> dict[str, Any]:
        return {"name": "tiny", "classes": ["background", "foreground"], **fields}

    def spec(self, **fields: Any) -> DatasetSpec:
        """A validated spec whose relative paths resolve against ``root``."""
        return spec_from_dict(self.spec_dict(**fields), base_dir=self.root)

    def spec_file(self, **fields: Any) -> Path:
        path = self.root / "dataset.json"
        path.write_text(json.dumps(self.spec_dict(**fields)), encoding="utf-8")
        return path


@pytest.fixture
def data_maker(tmp_path: Path) -> DataMaker:
    """A :class:`DataMaker` rooted at ``tmp_path / 'ds'``."""
    return DataMaker(tmp_path / "ds")


# Quality-control settings of the tiny run (small patches, fast detectors).
TINY_QC = {
    "extractors": ["encoder", "classical"],
    "detector": "knn",
    "compare": ["forte", "mahalanobis", "knn"],
    "patch_size": 32,
    "max_patches_per_image": 8,
    "synthetic_shifts": False,
}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-job run on synthetic particles (resnet18-UNet, two epochs), with TINY_QC.

    Shared by the quality-control and explanation tests; they only read it (and write their
    own qc/ and explain/ sub-folders).
    """
    from matseg.datasets.synthetic import write_synthetic_dataset
    from matseg.pipeline import run
    from matseg.profile import load_profile

    root = tmp_path_factory.mktemp("tinyrun")
    write_synthetic_dataset(root / "data", kind="particles", n_images=24, size=64, seed=0)
    profile = {
        "name": "tiny",
        "datasets": ["data/dataset.json"],
        "model": {"encoders": ["resnet18"], "decoders": ["unet"], "weights": "none"},
        "training": {"batch_size": 4, "max_epochs": 2, "patch_size": 64},
        "evaluation": {"protocol": "holdout"},
        "qc": TINY_QC,
    }
    (root / "profile.json").write_text(json.dumps(profile))
    return run(load_profile(root / "profile.json"), root / "runs", progress_bar=False).path
