"""Synthetic microstructures: shapes, class fractions, determinism, imaging effects, writer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from matseg.datasets import synthetic as syn
from matseg.datasets.discover import group_of
from matseg.errors import SpecError

KINDS = sorted(syn.STRUCTURES)


def _flat(value: float = 0.5, size: int = 64) -> np.ndarray:
    return np.full((size, size), value, dtype=np.float32)


def _gradient_energy(image: np.ndarray) -> float:
    gy, gx = np.gradient(image.astype(np.float64))
    return float(np.mean(gx**2 + gy**2))


# --- structures ---------------------------------------------------------------------------------


def test_registry_and_classes_agree() -> None:
    """Adding a kind means one generator in STRUCTURES and its class names in CLASSES."""
    assert set(syn.STRUCTURES) == set(syn.CLASSES)
    assert {"pores", "particles", "grains", "phases"} <= set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_dtypes_ranges_and_all_classes_present(kind: str) -> None:
    image, mask = syn.generate(kind, (96, 128), seed=1)
    assert image.shape == mask.shape == (96, 128)
    assert image.dtype == np.float32 and mask.dtype == np.int64
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert set(np.unique(mask)) == set(range(len(syn.CLASSES[kind])))


@pytest.mark.parametrize("kind", KINDS)
def test_volumes(kind: str) -> None:
    volume, labels = syn.generate_volume(kind, (16, 20, 24), seed=2)
    assert volume.shape == labels.shape == (16, 20, 24)
    assert volume.dtype == np.float32 and labels.dtype == np.int64
    assert volume.min() >= 0.0 and volume.max() <= 1.0
    assert len(np.unique(labels)) > 1
    assert syn.generate_volume(kind, 16, seed=2)[0].shape == (16, 16, 16)


@pytest.mark.parametrize("porosity", [0.2, 0.5])
def test_pores_porosity_and_dark_pores(porosity: float) -> None:
    image, mask = syn.pores(128, seed=3, porosity=porosity)
    assert abs(mask.mean() - porosity) <= 0.05
    assert image[mask == 1].mean() < image[mask == 0].mean()
    _, labels = syn.generate_volume("pores", 24, seed=3, porosity=porosity)
    assert abs(labels.mean() - porosity) <= 0.05


def test_particles_coverage_and_bright_particles() -> None:
    fractions = [syn.particles(128, seed=s, coverage=0.3)[1].mean() for s in range(6)]
    assert abs(np.mean(fractions) - 0.3) <= 0.05
    image, mask = syn.particles(128, seed=0)
    assert image[mask == 1].mean() > image[mask == 0].mean()


def test_grains_thin_boundaries_and_distinct_grey_levels() -> None:
    image, mask = syn.grains(128, seed=4, grain_size=20)
    assert 0.02 < mask.mean() < 0.2
    # 1-pixel lines: no 3x3 block is entirely boundary.
    assert not ndimage.binary_erosion(mask.astype(bool), np.ones((3, 3), bool)).any()
    assert len(np.unique(image[mask == 0])) > 10
    thick = syn.grains(128, seed=4, grain_size=20, boundary_width=3)[1]
    assert thick.mean() > mask.mean()
    assert len(np.unique(syn.grains(64, seed=0, n_grains=5)[0])) <= 6


def test_phases_fractions() -> None:
    _, mask = syn.phases(128, seed=5)
    matrix, small, large = (np.mean(mask == c) for c in range(3))
    assert 0.3 < large < 0.7 and 0.0 < small < large and matrix > small


@pytest.mark.parametrize("kind", KINDS)
def test_determinism(kind: str) -> None:
    a_img, a_mask = syn.generate(kind, 64, seed=7)
    b_img, b_mask = syn.generate(kind, 64, seed=7)
    c_img, c_mask = syn.generate(kind, 64, seed=8)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_mask, c_mask)


def test_bad_kind_knob_and_parameters_raise_spec_error() -> None:
    with pytest.raises(SpecError, match=r"one of \['grains', 'particles', 'phases', 'pores'\]"):
        syn.generate("foam", 64)
    with pytest.raises(SpecError, match="porosity"):
        syn.generate("pores", 64, porosit=0.3)
    with pytest.raises(SpecError, match=r"porosity: expected a number in \(0.0, 1.0\), found 1.5"):
        syn.pores(64, porosity=1.5)
    with pytest.raises(SpecError, match="size"):
        syn.pores(4)
    with pytest.raises(SpecError, match="size"):
        syn.pores((32, 32, 32, 32))
    with pytest.raises(SpecError, match="radius_range"):
        syn.particles(64, radius_range=(8, 2))
    with pytest.raises(SpecError, match="n_grains"):
        syn.grains(64, n_grains=1)
    with pytest.raises(SpecError, match="disorder"):
        syn.phases(64, disorder=2.0)


# --- simulated imaging --------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["poisson", "gaussian"])
def test_noise_raises_std_of_flat_image(model: str) -> None:
    rng = np.random.default_rng(0)
    low = syn.add_noise(_flat(), snr=50, rng=rng, model=model).std()
    high = syn.add_noise(_flat(), snr=5, rng=rng, model=model).std()
    assert 0.0 < low < high


def test_blur_lowers_gradient_energy() -> None:
    image, _ = syn.grains(64, seed=0)
    assert _gradient_energy(syn.blur(image, 2.0)) < 0.5 * _gradient_energy(image)
    assert np.array_equal(syn.blur(image, 0.0), image)


def test_drift_changes_mean() -> None:
    flat = _flat()
    assert syn.drift(flat, gain=0.8).mean() < flat.mean()
    assert syn.drift(flat, offset=0.1).mean() > flat.mean()
    scanned = syn.drift(flat, scan_drift=-0.3)
    assert scanned[-1].mean() < scanned[0].mean()


@pytest.mark.parametrize(
    ("side", "bright", "dark"),
    [
        ("right", np.s_[:, -8:], np.s_[:, :8]),
        ("left", np.s_[:, :8], np.s_[:, -8:]),
        ("bottom", np.s_[-8:, :], np.s_[:8, :]),
        ("top", np.s_[:8, :], np.s_[-8:, :]),
    ],
)
def test_charging_brightens_one_side(side: syn.Side, bright: tuple, dark: tuple) -> None:
    out = syn.charging(_flat(0.3), 0.4, side=side, rng=np.random.default_rng(0))
    assert out[bright].mean() > out[dark].mean() + 0.15


def test_simulate_imaging_deterministic_and_valid() -> None:
    clean, _ = syn.particles(64, seed=0)
    cond = syn.ImagingConditions(charging=0.2, scan_drift=0.1)
    a = syn.simulate_imaging(clean, cond, seed=1)
    assert a.dtype == np.float32 and a.shape == clean.shape
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert np.array_equal(a, syn.simulate_imaging(clean, cond, seed=1))
    assert not np.array_equal(a, syn.simulate_imaging(clean, cond, seed=2))
    volume, _ = syn.generate_volume("pores", 16, seed=0)
    assert syn.simulate_imaging(volume, cond, seed=0).shape == (16, 16, 16)
    assert np.array_equal(
        syn.simulate_imaging(clean, syn.ImagingConditions(snr=None, blur_sigma=0)), clean
    )


def test_shifted_conditions_move_the_right_knob() -> None:
    base = syn.ImagingConditions()
    assert syn.shifted_conditions(base, "noise").snr < base.snr
    assert syn.shifted_conditions(base, "blur").blur_sigma > base.blur_sigma
    drifted = syn.shifted_conditions(base, "drift")
    assert drifted.gain < base.gain and drifted.scan_drift < base.scan_drift
    assert syn.shifted_conditions(base, "charging").charging > base.charging
    assert syn.shifted_conditions(base, "blur", strength=0) == base
    stronger = syn.shifted_conditions(base, "noise", strength=2).snr
    assert stronger < syn.shifted_conditions(base, "noise", strength=1).snr
    with pytest.raises(SpecError, match="'noise', 'blur', 'drift', 'charging'"):
        syn.shifted_conditions(base, "dust")
    # The shifted image really differs in the expected direction.
    clean, _ = syn.pores(64, seed=0)
    shifted = syn.simulate_imaging(clean, syn.shifted_conditions(base, "drift"), seed=0)
    assert shifted.mean() < syn.simulate_imaging(clean, base, seed=0).mean()


def test_bad_imaging_conditions_raise_spec_error() -> None:
    with pytest.raises(SpecError, match="snr"):
        syn.ImagingConditions(snr=-1)
    with pytest.raises(SpecError, match="charging_side"):
        syn.ImagingConditions(charging_side="up")  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="blurr"):
        syn.ImagingConditions.from_dict({"blurr": 1.0})
    assert syn.ImagingConditions.from_dict({"snr": 10}).snr == 10


# --- dataset writer -----------------------------------------------------------------------------


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_writer_pairs_tiles_groups_and_spec(tmp_path: Path) -> None:
    spec_path = syn.write_synthetic_dataset(
        tmp_path / "ds", kind="phases", n_images=6, size=32, seed=3, n_volumes=1, volume_size=16
    )
    root = spec_path.parent
    images = sorted(p.name for p in (root / "images").glob("*.png"))
    masks = sorted(p.name for p in (root / "masks").glob("*.png"))
    assert images == masks and len(images) == 6
    assert not list(root.rglob("*.tmp"))
    groups = {group_of(Path(n).stem, syn.GROUP_PATTERN) for n in images}
    assert groups == {"phases_m000", "phases_m001"}
    for name in images:
        img = np.asarray(Image.open(root / "images" / name))
        mask = np.asarray(Image.open(root / "masks" / name))
        assert img.dtype == mask.dtype == np.uint8
        assert img.shape == mask.shape == (32, 32)
        assert mask.max() < 3
    spec = json.loads(spec_path.read_text())
    assert list(spec) == [
        "name", "root", "images", "masks", "encoding", "classes",
        "modality", "material", "metadata", "split",
    ]  # fmt: skip
    assert spec["classes"] == ["matrix", "small_precipitate", "large_precipitate"]
    assert spec["encoding"] == {"type": "index"}
    assert spec["split"] == {"method": "random", "seed": 3, "group_pattern": r"^(.*)_tile\d+$"}
    assert spec["metadata"]["conditions"] == syn.ImagingConditions().to_dict()
    assert all(re.match(spec["split"]["group_pattern"], Path(n).stem) for n in images)
    vol = tifffile.imread(root / "volumes" / "vol0.tif")
    labels = tifffile.imread(root / "volume_labels" / "vol0.tif")
    assert vol.shape == labels.shape == (16, 16, 16)
    assert vol.dtype == labels.dtype == np.uint8


def test_writer_spec_loads_with_spec_loader(tmp_path: Path) -> None:
    spec_module = pytest.importorskip("matseg.datasets.spec")
    spec_path = syn.write_synthetic_dataset(tmp_path, kind="grains", n_images=4, size=32)
    spec = spec_module.load_spec(spec_path)
    assert spec.name == "synthetic-grains" and spec.split.group_pattern == syn.GROUP_PATTERN


def test_writer_is_byte_identical_for_same_seed(tmp_path: Path) -> None:
    kwargs = {"kind": "pores", "n_images": 4, "size": 32, "n_volumes": 1, "volume_size": 12}
    a = _files(syn.write_synthetic_dataset(tmp_path / "a", seed=5, **kwargs).parent)
    b = _files(syn.write_synthetic_dataset(tmp_path / "b", seed=5, **kwargs).parent)
    c = _files(syn.write_synthetic_dataset(tmp_path / "c", seed=6, **kwargs).parent)
    assert a == b
    assert a["images/pores_m000_tile00.png"] != c["images/pores_m000_tile00.png"]


def test_writer_knobs_conditions_and_errors(tmp_path: Path) -> None:
    spec_path = syn.write_synthetic_dataset(
        tmp_path / "k", kind="pores", n_images=4, size=32,
        conditions={"snr": 8.0}, knobs={"porosity": 0.25},
    )  # fmt: skip
    meta = json.loads(spec_path.read_text())["metadata"]
    assert meta["knobs"] == {"porosity": 0.25} and meta["conditions"]["snr"] == 8.0
    with pytest.raises(SpecError, match="kind"):
        syn.write_synthetic_dataset(tmp_path / "x", kind="foam")
    with pytest.raises(SpecError, match="n_images"):
        syn.write_synthetic_dataset(tmp_path / "x", n_images=0)
    with pytest.raises(SpecError, match="snr"):
        syn.write_synthetic_dataset(tmp_path / "x", conditions={"snr": 0})
    # A folder holding other tiles is refused: old files must not leak into the dataset.
    with pytest.raises(SpecError, match="other PNG files"):
        syn.write_synthetic_dataset(tmp_path / "k", kind="grains", n_images=4, size=32)
